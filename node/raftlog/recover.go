package raftlog

import (
	"net"
	"runtime/debug"
)

// addrString is a.String(), or "unknown" when a is nil or its String
// panics: a netstack (gonet) connection's RemoteAddr returns nil once its
// endpoint is gone, and a typed nil pointer may not survive String.
func addrString(a net.Addr) (s string) {
	if a == nil {
		return "unknown"
	}
	defer func() {
		if recover() != nil {
			s = "unknown"
		}
	}()
	return a.String()
}

// survive, deferred at the top of a goroutine that serves one connection
// (inbound or to one peer), turns a panic there into a closed connection:
// it logs the panic with its stack, counts it (TransportStats.Panics,
// raft_connection_panics_total) and calls closeConn; the process and the
// other connections go on. It is not used around raft's own Ready loop,
// where going on after a broken invariant could corrupt the log.
func (t *transport) survive(what string, closeConn func()) {
	v := recover()
	if v == nil {
		return
	}
	t.panics.Add(1)
	t.log.Error("panic serving a raft connection; closed that connection only",
		"conn", what, "panic", v, "stack", string(debug.Stack()))
	closeConn()
}

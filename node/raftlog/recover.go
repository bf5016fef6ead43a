package raftlog

import (
	"fmt"
	"net"
	"runtime/debug"
)

// addrString names a for a log line or error: "unknown" when nil (a
// netstack connection's RemoteAddr is nil once its endpoint is gone), and
// fmt's "<nil>" for a typed nil pointer, whose String fmt does not let
// panic.
func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return fmt.Sprint(a)
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

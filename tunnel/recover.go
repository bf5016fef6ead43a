package tunnel

import (
	"fmt"
	"net"
	"runtime/debug"
)

// addrString names a for a log line or error: "unknown" when nil (a
// netstack connection's RemoteAddr, or a netstack listener's Addr, is nil
// once its endpoint is gone, e.g. reset by the peer), and fmt's "<nil>"
// for a typed nil pointer, whose String fmt does not let panic.
func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return fmt.Sprint(a)
}

// survive, deferred at the top of a goroutine serving one forwarded
// connection, turns a panic there into a closed connection: logged with
// its stack, counted (memberd_tunnel_panics_total), and closeConn called;
// the device and its other connections go on.
func (d *Device) survive(what string, closeConn func()) {
	v := recover()
	if v == nil {
		return
	}
	d.stats.m.panics.Add(1)
	d.log.Error("panic serving a tunnel connection; closed that connection only",
		"conn", what, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	closeConn()
}

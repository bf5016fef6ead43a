package appliance

import (
	"log/slog"
	"net"
	"sync"
)

// peerWatch closes the ledger's tunnel connections (raft, gRPC) to a member
// whose tunnel endpoint may have restarted. A TCP connection inside the
// tunnel to the old endpoint does not fail by itself (the old netstack is
// gone; data waits for TCP retransmission timeouts of many minutes), so the
// leader would keep streaming raft messages into it and the restarted
// member would never hear from it.
//
// The tunnel closes its connections itself only where it is sure of a
// restart. It reports every new active key that was not announced as the
// member's next key (tunnel.Device.OnRekeyed), which includes a restart it
// cannot tell from a rotation whose announcement was lost; the ledger
// closes its connections on each (an announced rotation keeps the endpoint
// and its connections; a needless close costs one redial).
type peerWatch struct {
	log   *slog.Logger
	mu    sync.Mutex
	conns map[string]map[*watchedConn]struct{} // member -> open connections
}

type watchedConn struct {
	net.Conn
	w      *peerWatch
	member string
	once   sync.Once
}

// Close implements net.Conn: closes and forgets the connection.
func (c *watchedConn) Close() error {
	var err error
	c.once.Do(func() {
		c.w.mu.Lock()
		delete(c.w.conns[c.member], c)
		c.w.mu.Unlock()
		err = c.Conn.Close()
	})
	return err
}

func (w *peerWatch) track(member string, c net.Conn) net.Conn {
	wc := &watchedConn{Conn: c, w: w, member: member}
	w.mu.Lock()
	if w.conns == nil {
		w.conns = map[string]map[*watchedConn]struct{}{}
	}
	if w.conns[member] == nil {
		w.conns[member] = map[*watchedConn]struct{}{}
	}
	w.conns[member][wc] = struct{}{}
	w.mu.Unlock()
	return wc
}

// rekeyed is the tunnel's OnRekeyed function: it closes the connections
// to member, which are redialed.
func (w *peerWatch) rekeyed(member string) {
	n := w.closeMember(member)
	w.log.Info("member's tunnel endpoint restarted: closed the ledger connections to it, they are redialed", "peer", member, "connections", n)
}

// closeMember closes every tracked connection to member.
func (w *peerWatch) closeMember(member string) int {
	w.mu.Lock()
	var cs []*watchedConn
	for c := range w.conns[member] {
		cs = append(cs, c)
	}
	w.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	return len(cs)
}

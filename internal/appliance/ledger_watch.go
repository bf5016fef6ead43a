package appliance

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// peerWatchEvery is how often the ledger looks for restarted members.
const peerWatchEvery = 500 * time.Millisecond

// peerWatch closes the ledger's tunnel connections (raft, gRPC) to a member
// whose tunnel endpoint restarted. A TCP connection inside the tunnel to the
// old endpoint does not fail by itself (the old netstack is gone; data
// waits for TCP retransmission timeouts of many minutes), so the leader
// would keep streaming raft messages into it and the restarted member
// would never hear from it. A restart shows as a new active WireGuard key
// that was not announced as the member's pending key (an announced rotation
// keeps the endpoint and its connections).
type peerWatch struct {
	mu    sync.Mutex
	conns map[string]map[*watchedConn]struct{} // member -> open connections
	keys  map[string]peerKeys                  // last seen, for restarted
}

type peerKeys struct{ active, pending tunnel.Key }

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

// restarted compares the peers' keys with the last seen and returns the
// members whose active key changed other than to their announced pending
// key. Pure: it only updates w.keys.
func (w *peerWatch) restarted(peers []tunnel.PeerStatus) []string {
	var out []string
	// Members missing now keep their last keys: one that disappears and
	// comes back with a new key restarted too.
	cur := make(map[string]peerKeys, len(w.keys))
	for m, k := range w.keys {
		cur[m] = k
	}
	for _, p := range peers {
		k := peerKeys{active: p.PublicKey, pending: p.PendingKey}
		cur[p.Member] = k
		prev, ok := w.keys[p.Member]
		if ok && prev.active != k.active && (prev.pending.IsZero() || prev.pending != k.active) {
			out = append(out, p.Member)
		}
	}
	w.keys = cur
	return out
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

// run polls dev's peers every interval until ctx ends.
func (w *peerWatch) run(ctx context.Context, dev interface{ Peers() []tunnel.PeerStatus }, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		w.mu.Lock()
		gone := w.restarted(dev.Peers())
		w.mu.Unlock()
		for _, m := range gone {
			n := w.closeMember(m)
			log.Info("member's tunnel endpoint restarted: closed the ledger connections to it, they are redialed", "peer", m, "connections", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

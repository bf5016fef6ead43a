package relay

import (
	"context"
	"math/rand/v2"
	"net"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/relay/wire"
)

// RunMesh keeps this relay connected to the other relays of the policy
// until ctx ends or the server closes. Of each pair of relays, the one
// whose id sorts first dials (one link per pair); both then tell each other
// which members are attached, and a packet for a member attached elsewhere
// goes one hop over that link. The relay list is re-read on every
// UpdateAuthority.
func (s *Server) RunMesh(ctx context.Context) error {
	ctx, cancel := s.serveCtx(ctx)
	defer cancel()
	mc := s.cfg.Mesh
	mc.Identity = s.cfg.Identity
	mc.role = wire.RoleRelay
	mc.Relays = []RelayInfo{{ID: "x", Addr: "x:1", Pin: "sha256/"}} // satisfies withDefaults only
	mc = mc.withDefaults()
	d := &dialer{
		identity: s.cfg.Identity, role: wire.RoleRelay,
		quicTimeout: mc.QUICTimeout, tcpTimeout: mc.TCPTimeout, keepAlive: mc.KeepAlive,
		proxy: proxyFor(mc.Proxy, nil), queueLen: s.cfg.QueueLen, drop: s.m.drop,
		dialStream: mc.DialStream,
	}
	type running struct {
		info   RelayInfo
		cancel context.CancelFunc
	}
	dialing := map[string]running{}
	var g errgroup.Group
	defer func() {
		for _, r := range dialing {
			r.cancel()
		}
		g.Wait()
	}()
	for {
		want := map[string]RelayInfo{}
		for _, r := range s.authority().Relays() {
			if r.ID > s.cfg.ID {
				want[r.ID] = r
			}
		}
		for id, r := range dialing {
			if w, ok := want[id]; !ok || w != r.info {
				r.cancel()
				delete(dialing, id)
			}
		}
		for id, r := range want {
			if _, ok := dialing[id]; ok {
				continue
			}
			rctx, rcancel := context.WithCancel(ctx)
			dialing[id] = running{info: r, cancel: rcancel}
			g.Go(func() error {
				// meshLoop returns when rctx ends, or after a panic: then again.
				for rctx.Err() == nil {
					err := guarded(func() error { s.meshLoop(rctx, d, r, mc); return nil })
					s.m.survived(rctx, s.log, err, "peer_relay", r.ID)
				}
				return nil
			})
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.meshKick:
		}
	}
}

// meshLoop keeps one link to relay r, with backoff between attempts.
func (s *Server) meshLoop(ctx context.Context, d *dialer, r RelayInfo, mc ClientConfig) {
	backoff := mc.BackoffMin
	for ctx.Err() == nil {
		l, _, err := d.dialBest(ctx, r)
		if err != nil {
			s.log.Warn("mesh: relay unreachable", "peer_relay", r.ID, "addr", r.Addr, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff/2 + rand.N(backoff/2+1)):
			}
			backoff = min(2*backoff, mc.BackoffMax)
			continue
		}
		backoff = mc.BackoffMin
		var g errgroup.Group
		lctx, cancel := context.WithCancel(ctx)
		g.Go(func() error { s.meshPinger(lctx, l, mc); return nil })
		err = s.runPeer(lctx, l, r.ID, true, remoteOf(l))
		cancel()
		g.Wait()
		if !s.m.survived(ctx, s.log, err, "peer_relay", r.ID) {
			s.log.Info("mesh: link to relay ended", "peer_relay", r.ID, "err", err)
		}
	}
}

// meshPinger keeps a dialled mesh link alive and drops it when the peer
// relay was silent for 2×DeadAfter, so meshLoop redials. Sooner than a
// client's 4×: a mesh link is the only path to that relay (no other link
// carries its traffic meanwhile, as a client's other relays do), so a dead
// one costs until it is redialled.
func (s *Server) meshPinger(ctx context.Context, l *link, mc ClientConfig) {
	l.keepalive(ctx, mc.PingInterval, 2*mc.DeadAfter, nil)
}

func remoteOf(l *link) net.Addr {
	if l.qconn != nil {
		return l.qconn.RemoteAddr()
	}
	if c, ok := l.stream.(interface{ RemoteAddr() net.Addr }); ok {
		return c.RemoteAddr()
	}
	return &net.TCPAddr{}
}

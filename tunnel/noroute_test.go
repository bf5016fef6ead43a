package tunnel_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// noRoute is a transport that fails every send while down is set, as
// relay.Client does while no relay is connected (ErrNoRelay).
type noRoute struct {
	*tunneltest.Transport
	down atomic.Bool
}

func (n *noRoute) WritePacket(pkt []byte, member string) error {
	if n.down.Load() {
		return errors.New("all relays down")
	}
	return n.Transport.WritePacket(pkt, member)
}

// TestStartWithoutRelayReachesPeersSoonAfter is issue #11 item 5: a member
// that started while no relay was reachable reached its peers 16-30 s after
// the relay came up, because the resend of its announcements had doubled
// (1, 2, 4, 8, 16 s) while every send failed. Now failed sends do not grow
// the interval, so the pair is ready about one retry (1 s) after the route
// is back. The bound leaves room for a loaded machine and still fails on the
// old backoff, whose next resend after 9 s of failures is 6 s away.
func TestStartWithoutRelayReachesPeersSoonAfter(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 9 s for the old backoff to grow; skipped under -short")
	}
	net := tunneltest.NewNetwork(tunneltest.Options{})
	var a *noRoute
	c := newCluster(t, 2, clusterOpts{quiet: true, net: tunneltest.Options{}, config: func(cfg *tunnel.Config) {
		tr := &noRoute{Transport: net.Transport(cfg.Member)}
		if cfg.Member == "bank-a" {
			tr.down.Store(true)
			a = tr
		}
		cfg.Transport = tr
	}})
	time.Sleep(9 * time.Second) // bank-a's resends fail at 1, 2, 3, ... s (old code: 1, 3, 7 s)
	if n := len(activePeers(c.devs["bank-b"])); n != 0 {
		t.Fatalf("bank-b knows %d peers although bank-a could send nothing", n)
	}
	a.down.Store(false)
	up := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	t.Logf("both members ready %v after bank-a's route came back", time.Since(up).Round(time.Millisecond))
}

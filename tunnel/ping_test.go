package tunnel_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// TestPing: a member pings another through the tunnel with an ACL that
// allows nothing (echo needs no port); 200 attempts in a row each get their
// own reply (wireguard-go's PingConn could miss a reply that came before
// it waited for one). A non-member and itself are refused, and a closed
// peer gives a timeout, not a hang.
func TestPing(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{acl: func(string, string, uint16) bool { return false }})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a := c.devs[memberName(0)]
	for i := range 200 {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		rtt, err := a.Ping(pctx, memberName(1))
		pcancel()
		if err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
		if rtt <= 0 || rtt > 2*time.Second {
			t.Fatalf("ping %d: rtt %v", i, rtt)
		}
		if i == 0 || i == 199 {
			t.Logf("ping %d: rtt %v", i, rtt)
		}
	}
	if _, err := a.Ping(ctx, "bank-zz"); !errors.Is(err, tunnel.ErrNotMember) {
		t.Fatalf("ping of a non-member: %v, want ErrNotMember", err)
	}
	if _, err := a.Ping(ctx, memberName(0)); !errors.Is(err, tunnel.ErrDenied) {
		t.Fatalf("ping of itself: %v, want ErrDenied", err)
	}
	c.devs[memberName(1)].Close()
	pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer pcancel()
	start := time.Now()
	if _, err := a.Ping(pctx, memberName(1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping of a closed peer: %v, want a deadline error", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("ping of a closed peer took %v", el)
	}
}

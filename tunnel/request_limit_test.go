package tunnel_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRequestFloodBounded: a member that floods a peer with announcements
// asking for its attestation gets at most the burst plus one answer per
// RequestInterval; the rest are counted as request_limited. Start-up, where
// requests cross, still converges at once.
func TestRequestFloodBounded(t *testing.T) {
	var toC atomic.Int64 // announcements bank-a sends to bank-c
	reg := prometheus.NewRegistry()
	start := time.Now()
	c := newCluster(t, 2, clusterOpts{
		net: tunneltest.Options{Observe: func(from, to string, pkt []byte) {
			if from == "bank-a" && to == "bank-c" && tunnel.IsAnnounceStart(pkt) {
				toC.Add(1)
			}
		}},
		config: func(cfg *tunnel.Config) {
			if cfg.Member == "bank-a" {
				cfg.Registerer = reg
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("start-up took %v, want well under the 1 s retry + request interval", el)
	}
	a := c.devs["bank-a"]

	// bank-c is in the policy; its appliance is a loop sending valid
	// announcements with the request flag.
	cSpec := tunneltest.MemberSpec{ID: "bank-c", Addr: c.specs[1].Addr.Next(), CA: testpki.NewCA(t, "bank-c")}
	a.SetAuthority(tunneltest.NewAuthority(append(c.specs, cSpec), nil))
	flooder := c.net.Transport("bank-c")
	defer flooder.Close()
	signer, chain := cSpec.CA.Issue(t, "appliance").Identity()
	k, _ := tunnel.NewPrivateKey()
	now := time.Now()
	att, err := tunnel.SignAttestation(signer, chain, "bank-c", k.PublicKey(), now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	pkts := tunnel.RequestPackets(att.Marshal(), flooder.MaxPacketSize())
	before := toC.Load() // SetAuthority's own announcement
	floodStart := time.Now()
	const requests = 300
	for i := range requests {
		for _, p := range pkts {
			if err := flooder.WritePacket(p, "bank-a"); err != nil {
				t.Fatal(err)
			}
		}
		if i%20 == 19 {
			time.Sleep(5 * time.Millisecond) // stay within the control queue
		}
	}
	waitForCond(t, ctx, "the flood to be processed", func() bool {
		return a.Stats().AttestationsAccepted > 0 &&
			metricValue(t, reg, "memberd_tunnel_control_dropped_total", "reason", "request_limited")+
				float64(toC.Load()-before) >= requests-20
	})
	el := time.Since(floodStart)
	answers := toC.Load() - before
	// Burst, one per interval elapsed, and the resends to a member that is
	// not ready (timerLoop, from 1 s with backoff) at most as many again.
	bound := int64(3 + 2*(el/time.Second+1))
	limited := metricValue(t, reg, "memberd_tunnel_control_dropped_total", "reason", "request_limited")
	t.Logf("%d requests in %v: %d announcements sent back, %v limited", requests, el, answers, limited)
	if answers > bound {
		t.Fatalf("%d announcements to the flooding member, want <= %d", answers, bound)
	}
	if limited < requests-float64(bound)-20 {
		t.Fatalf("request_limited = %v, want about %d", limited, requests-answers)
	}
}

package tunnel_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// TestExpiredAttestationRemovesPeer: when a peer's attestation runs out
// (here: bank-b's clock jumps past it), its WireGuard peer is removed, its
// re-announcements of the same attestation are refused as expired, and
// Dial no longer finds it.
func TestExpiredAttestationRemovesPeer(t *testing.T) {
	var skew atomic.Int64
	c := newCluster(t, 2, clusterOpts{config: func(cfg *tunnel.Config) {
		cfg.RotateEvery = time.Hour
		cfg.AttestationTTL = 2 * time.Hour
		cfg.AnnounceEvery = 200 * time.Millisecond
		if cfg.Member == "bank-b" {
			cfg.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	b := c.devs["bank-b"]
	skew.Store(int64(3 * time.Hour))
	for len(activePeers(b)) != 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("expired peer still configured: %+v", b.Peers())
		case <-time.After(20 * time.Millisecond):
		}
	}
	refused := b.Stats().AttestationsRefused
	for b.Stats().AttestationsRefused == refused {
		select {
		case <-ctx.Done():
			t.Fatal("re-announced expired attestation not refused")
		case <-time.After(20 * time.Millisecond):
		}
	}
	dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer dcancel()
	if _, err := b.Dial(dctx, "bank-a", 7050); err == nil {
		t.Fatal("dialed a member whose attestation expired")
	} else {
		t.Log(err)
	}
}

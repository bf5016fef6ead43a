package tunnel_test

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// TestKeyRotationKeepsTCP keeps a TCP stream going in each direction while
// both members (started together, so their rotations overlap) rotate their
// WireGuard keys at least twice; every byte is checked.
func TestKeyRotationKeepsTCP(t *testing.T) {
	var handshakes atomic.Int64
	c := newCluster(t, 2, clusterOpts{
		net: tunneltest.Options{Observe: func(from, to string, pkt []byte) {
			if len(pkt) > 0 && pkt[0] == 1 { // WireGuard handshake initiation
				handshakes.Add(1)
			}
		}},
		config: func(cfg *tunnel.Config) {
			cfg.RotateEvery = 3 * time.Second
			cfg.AttestationTTL = 10 * time.Second
			cfg.AnnounceEvery = 5 * time.Second
		}})
	var maxPause atomic.Int64
	streamGapHook = func(gap time.Duration, at int64) {
		if int64(gap) > maxPause.Load() {
			maxPause.Store(int64(gap))
		}
	}
	defer func() { streamGapHook = func(time.Duration, int64) {} }()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := c.devs["bank-a"], c.devs["bank-b"]
	keyA0, keyB0 := a.PublicKey(), b.PublicKey()
	ca, cb := connect(t, ctx, a, b, "bank-b", 7050)

	stop := make(chan struct{})
	type result struct {
		n   int64
		err error
	}
	// ~3 MB/s each way: a live stream, without starving the shared machine.
	// ROT_UNPACED=1 streams flat out: the connection still survives every
	// rotation, but throughput can then fall to a trickle for tens of
	// seconds (open issue: no transport or WireGuard drop explains it; see
	// the package notes).
	var pace = 5 * time.Millisecond
	if os.Getenv("ROT_UNPACED") != "" {
		pace = 0
	}
	ab, ba := make(chan result, 1), make(chan result, 1)
	go func() { n, err := pacedStream(ca, cb, 3, stop, pace); ab <- result{n, err} }()
	go func() { n, err := pacedStream(cb, ca, 4, stop, pace); ba <- result{n, err} }()

	for a.Stats().Rotations < 2 || b.Stats().Rotations < 2 {
		select {
		case <-ctx.Done():
			t.Fatalf("rotations: a=%d b=%d", a.Stats().Rotations, b.Stats().Rotations)
		case r := <-ab:
			t.Fatalf("a→b stream ended early after %d bytes: %v", r.n, r.err)
		case r := <-ba:
			t.Fatalf("b→a stream ended early after %d bytes: %v", r.n, r.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	time.Sleep(time.Second) // traffic after the last switch
	close(stop)
	for name, ch := range map[string]chan result{"a→b": ab, "b→a": ba} {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("%s: %v", name, r.err)
			}
			if r.n == 0 {
				t.Fatalf("%s: no bytes", name)
			}
			t.Logf("%s: %d bytes checked across rotations", name, r.n)
		case <-ctx.Done():
			t.Fatalf("%s stream did not finish", name)
		}
	}
	t.Logf("rotations a=%d b=%d, handshake initiations %d, longest stream pause %v", a.Stats().Rotations, b.Stats().Rotations, handshakes.Load(), time.Duration(maxPause.Load()))
	if a.PublicKey() == keyA0 || b.PublicKey() == keyB0 {
		t.Fatal("keys did not change")
	}
	// Each side routes to the other's current key (or is about to promote
	// the key just announced), and no stale peer is left.
	for _, pair := range []struct {
		d    *tunnel.Device
		peer *tunnel.Device
	}{{a, b}, {b, a}} {
		ps := pair.d.Peers()
		if len(ps) != 1 || (ps[0].PublicKey != pair.peer.PublicKey() && ps[0].PendingKey != pair.peer.PublicKey()) {
			t.Fatalf("peers %+v, want the current key %s", ps, pair.peer.PublicKey())
		}
	}
}

package orderer

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

// orderAll orders count fresh envelopes on the leader of cl and returns
// their Pendings, in order.
func orderAll(t *testing.T, cl *cluster, n *Node, count int) []*Pending {
	t.Helper()
	envs, _ := envelopes(t, cl.c.identity(t, "m1", "client"), count, 100)
	var out []*Pending
	for i, e := range envs {
		raw, _ := proto.Marshal(e)
		p, err := n.Order(t.Context(), raw)
		if err != nil {
			t.Fatalf("envelope %d: %v", i, err)
		}
		out = append(out, p)
	}
	return out
}

// blockSizes returns the envelope count of blocks 1.. of n's store.
func blockSizes(t *testing.T, n *Node) []int {
	t.Helper()
	var sizes []int
	for i := uint64(1); i < n.Height(); i++ {
		b, err := n.Store().Get(i)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(b.Data.Data))
	}
	return sizes
}

// TestDriverCutsAdaptively: with a BatchTimeout of ten minutes (the longest a policy allows), a lone envelope
// is still committed (cut at once, nothing being in flight), and a burst
// is cut into blocks within MaxMessageCount. With FixedBatches the node
// cuts as stock Fabric: only a full batch.
func TestDriverCutsAdaptively(t *testing.T) {
	batch := block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 10 * time.Minute}
	tests := []struct {
		name  string
		fixed bool
	}{{"adaptive", false}, {"fixed batches", true}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCluster(t, 3, batch, func(c *Config) { c.FixedBatches = tc.fixed })
			n := cl.node(cl.leader(10 * time.Second))
			if !tc.fixed {
				p := orderAll(t, cl, n, 1)[0]
				if err := p.Wait(t.Context()); err != nil {
					t.Fatalf("lone envelope with BatchTimeout 10m: %v", err)
				}
				if got := blockSizes(t, n); len(got) != 1 || got[0] != 1 {
					t.Fatalf("blocks %v, want one block of the lone envelope", got)
				}
			}
			pend := orderAll(t, cl, n, 25)
			if tc.fixed {
				pend = pend[:20] // the last 5 wait for 5 more or the hour
			}
			for i, p := range pend {
				if err := p.Wait(t.Context()); err != nil {
					t.Fatalf("envelope %d: %v", i, err)
				}
			}
			sizes, total := blockSizes(t, n), 0
			for _, s := range sizes {
				if s < 1 || s > int(batch.MaxMessageCount) {
					t.Fatalf("blocks %v: one outside 1..MaxMessageCount", sizes)
				}
				if tc.fixed && s != int(batch.MaxMessageCount) {
					t.Fatalf("blocks %v with FixedBatches, want only full blocks", sizes)
				}
				total += s
			}
			want := len(pend)
			if !tc.fixed {
				want++ // the lone envelope
			}
			if total != want {
				t.Fatalf("blocks %v hold %d envelopes, want %d", sizes, total, want)
			}
			if tc.fixed {
				ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
				defer cancel()
				if err := orderAll(t, cl, n, 1)[0].Wait(ctx); !errors.Is(err, ErrUnavailable) {
					t.Fatalf("a 26th envelope with FixedBatches: %v, want it pending (ErrUnavailable at ctx end)", err)
				}
			}
			t.Logf("blocks %v", sizes)
		})
	}
}

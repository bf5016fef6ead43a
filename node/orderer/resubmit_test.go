package orderer

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

// resubmitCluster is one node that cuts only at BatchTimeout (1s), so an
// envelope stays in its cutter long enough to be resubmitted meanwhile.
func resubmitCluster(t *testing.T) (*cluster, *Node) {
	cl := newCluster(t, 1, block.CutterConfig{MaxMessageCount: 100, BatchTimeout: time.Second},
		func(c *Config) { c.FixedBatches = true })
	return cl, cl.node(cl.leader(10 * time.Second))
}

// TestResubmitWhileOrdering: a client whose wait ended (its context, or
// SubmitTimeout) while the leader still held its envelope, resubmitting as
// told, got it admitted a second time, and the tx id went into the chain
// twice (found by the simulation, test/sim, seed 6). The resubmission is
// now a duplicate, and the tx id is in the chain once.
func TestResubmitWhileOrdering(t *testing.T) {
	cl, n := resubmitCluster(t)
	envs, ids := envelopes(t, cl.c.identity(t, "m1", "client1"), 1, 10)
	raw, err := proto.Marshal(envs[0])
	if err != nil {
		t.Fatal(err)
	}
	p, err := n.Order(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	waitOrdering(t, n, ids[0])
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Wait(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Wait with a cancelled context: %v, want ErrUnavailable", err)
	}
	if _, err := n.Order(context.Background(), raw); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("resubmission while the first copy is in the cutter: %v, want ErrDuplicate", err)
	}
	cl.waitHeight(2, 10*time.Second)
	time.Sleep(1500 * time.Millisecond) // a second copy would be cut by now
	if c := cl.checkIdentical()[ids[0]]; c != 1 {
		t.Fatalf("tx in the chain %d times, want 1", c)
	}
}

// TestStaleSubmissionNotOrdered: a submission still queued for the cutter
// when its waiter was failed (a step-down or a failed leader barrier: the
// client is told to resubmit) used to be ordered as well as the
// resubmission, once per failed attempt (the simulation's seed 6 found a
// tx id 55 times). Only the submission a client still waits for is ordered.
func TestStaleSubmissionNotOrdered(t *testing.T) {
	cl, n := resubmitCluster(t)
	envs, ids := envelopes(t, cl.c.identity(t, "m1", "client1"), 1, 10)
	raw, err := proto.Marshal(envs[0])
	if err != nil {
		t.Fatal(err)
	}
	k := keyOf(ids[0])
	// What failAll leaves behind: queued, its waiter answered and gone.
	n.submitCh <- submission{raw: raw, key: k, w: &waiter{done: make(chan struct{})}}
	p, err := n.Order(context.Background(), raw) // the resubmission
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // a second copy would be cut by now
	cl.waitHeight(n.Height(), 10*time.Second)
	if c := cl.checkIdentical()[ids[0]]; c != 1 {
		t.Fatalf("tx in the chain %d times, want 1", c)
	}
}

// waitOrdering waits until the leader n has taken txid into its cutter.
func waitOrdering(t *testing.T, n *Node, txid string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		n.mu.Lock()
		_, ok := n.ordering[keyOf(txid)]
		n.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the envelope never reached the cutter")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package raftlog

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestElectionWhileApplyingSnapshot is the soak's lost liveness (issue #9):
// a follower that fell behind a snapshot hands it to the application,
// which fetches the blocks it lacks from a peer (the ledger's catch-up
// through Deliver), and that peer, the leader, is killed mid-fetch. The
// two survivors must still elect a leader: the follower busy catching up
// answers (pre-)votes and keeps its election timer, instead of stopping
// its raft loop until the application returns (which, with the fetch
// hanging on the dead leader, was never: the survivor asking for votes
// got none for minutes). Once the fetch completes from the survivor, the
// follower applies everything after the snapshot in order.
func TestElectionWhileApplyingSnapshot(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 50; cfg.CatchUpEntries = 10 })
	lead := c.leader(10 * time.Second)
	f := lead%3 + 1    // the follower that will catch up
	other := f%3 + 1   // the other follower
	if other == lead { // lead, f, other are the three nodes
		other = other%3 + 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.propose(ctx, "a", 4, 100, nil)
	c.waitApplied(100, 30*time.Second)
	c.stop(f)
	c.propose(ctx, "b", 4, 400, nil) // the leader compacts past f's log
	unblock := c.restartBehindSnapshot(ctx, f)
	defer unblock()
	c.stop(lead)

	// Only f and other run; other needs f's vote.
	deadline := time.Now().Add(30 * time.Second)
	for c.nodes[other].node().Leader() == 0 || c.nodes[other].node().Leader() == lead {
		if time.Now().After(deadline) {
			t.Fatalf("no leader among the survivors %d and %d within 30s while %d applies a snapshot (status of %d: %+v)",
				f, other, f, other, c.nodes[other].node().Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	newLead := c.nodes[other].node().Leader()

	// The fetch completes (from the survivor); f applies the rest in order
	// and the survivors go on committing.
	unblock()
	c.propose(ctx, "c", 2, 50, nil)
	c.start(lead)
	c.waitApplied(550, time.Minute)
	c.checkIdentical()
	t.Logf("leader %d stopped while %d applied a snapshot; %d elected", lead, f, newLead)
}

// TestEntriesQueuedBehindSnapshotAppliedTogether: the entries committed
// while a follower's catch-up runs wait behind its snapshot, one job per
// raft Ready; once the catch-up returns they are handed to the
// application in one Apply (one write and one fsync of the ledger's
// blocks), not one per Ready: applied one by one, about 170 queued
// blocks took 1.4 s after the catch-up in make e2e (partition).
func TestEntriesQueuedBehindSnapshotAppliedTogether(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 50; cfg.CatchUpEntries = 10 })
	lead := c.leader(10 * time.Second)
	f := lead%3 + 1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.propose(ctx, "a", 4, 100, nil)
	c.waitApplied(100, 30*time.Second)
	c.stop(f)
	c.propose(ctx, "b", 4, 400, nil) // the leader compacts past f's log
	unblock := c.restartBehindSnapshot(ctx, f)
	defer unblock()
	// One at a time on the leader: one Ready each on the follower.
	const queued = 60
	ln := c.nodes[lead].node()
	for i := range queued {
		if _, err := ln.ProposeWait(ctx, fmt.Appendf(nil, "c-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	app := c.nodes[f].app
	before := app.commits.Load()
	unblock()
	c.waitApplied(500+queued, time.Minute)
	calls := app.commits.Load() - before
	t.Logf("%d entries committed one by one during the catch-up; applied in %d calls after it", queued, calls)
	if calls > 3 {
		t.Errorf("the %d entries queued behind the snapshot took %d Apply calls: want them together", queued, calls)
	}
	c.checkIdentical()
}

// restartBehindSnapshot restarts the stopped follower f, whose log the
// leader compacted past, with its application's catch-up fetch blocked:
// it returns once f has been handed the snapshot and is fetching, with the
// function that lets the fetch go on (idempotent).
func (c *cluster) restartBehindSnapshot(ctx context.Context, f uint64) (unblock func()) {
	c.t.Helper()
	fetching, release := make(chan struct{}), make(chan struct{})
	var once, rel sync.Once
	unblock = func() { rel.Do(func() { close(release) }) }
	app := c.nodes[f].app
	fetch := app.fetch
	app.fetch = func(upTo int) [][]byte {
		once.Do(func() { close(fetching) })
		<-release
		return fetch(upTo)
	}
	c.start(f)
	select {
	case <-fetching:
	case <-ctx.Done():
		unblock()
		c.t.Fatal("the restarted follower was never handed a snapshot")
	}
	return unblock
}

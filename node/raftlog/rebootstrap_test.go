package raftlog

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestRebootstrappedNodeAcceptsNewLeader: a consenter removed and added
// back under its raft ID, then restarted on an empty disk from the genesis
// peers (as a member recovered onto a new disk is), while a node added
// after genesis leads. Its genesis configuration does not know that
// leader, but it must accept the leader's connection and catch up: it
// hears of every later member only from the leader. (The recover runbook
// hung here: the fresh node refused the leader's handshake as "not a
// member of cluster here" and ran pre-votes for ever.)
func TestRebootstrappedNodeAcceptsNewLeader(t *testing.T) {
	base := func(cfg *Config) { cfg.SnapshotEvery = 50; cfg.CatchUpEntries = 10 }
	c := newCluster(t, 3, base)
	lead := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.propose(ctx, "a", 3, 100, nil)

	// Node 4 joins, then leads.
	if err := c.nodes[lead].node().AddPeer(ctx, Peer{ID: 4, Addr: "n4", Name: "m4"}); err != nil {
		t.Fatalf("AddPeer(4): %v", err)
	}
	genesis := []Peer{{1, "n1", "m1"}, {2, "n2", "m2"}, {3, "n3", "m3"}}
	c.size = 4
	tn4 := &testNode{id: 4, dir: filepath.Join(t.TempDir(), "n4"), app: &testApp{}}
	tn4.app.fetch = c.fetchFrom(4)
	c.nodes[4] = tn4
	c.tune = func(cfg *Config) {
		base(cfg)
		switch cfg.ID {
		case 4:
			cfg.Join, cfg.Peers = true, nil
		case 2:
			cfg.Peers = genesis // a new disk starts from the genesis consenters
		}
	}
	c.start(4)
	c.propose(ctx, "b", 4, 100, nil)
	c.waitApplied(200, 30*time.Second)
	if lead = c.leader(10 * time.Second); lead != 4 {
		if err := c.nodes[lead].node().TransferLeadership(ctx, 4); err != nil {
			t.Fatalf("TransferLeadership(4): %v", err)
		}
		if lead = c.leader(10 * time.Second); lead != 4 {
			t.Fatalf("node %d leads, want 4", lead)
		}
	}

	// Node 2 is removed, loses its disk, and is added back.
	if err := c.nodes[4].node().RemovePeer(ctx, 2); err != nil {
		t.Fatalf("RemovePeer(2): %v", err)
	}
	c.stop(2)
	tn2 := &testNode{id: 2, dir: filepath.Join(t.TempDir(), "n2-new"), app: &testApp{}}
	tn2.app.fetch = c.fetchFrom(2)
	c.nodes[2] = tn2
	c.propose(ctx, "c", 4, 50, nil)
	if err := c.nodes[4].node().AddPeer(ctx, Peer{ID: 2, Addr: "n2", Name: "m2"}); err != nil {
		t.Fatalf("AddPeer(2): %v", err)
	}
	c.start(2)
	c.propose(ctx, "d", 4, 50, nil)
	c.waitApplied(300, 30*time.Second)
	c.checkIdentical()
	if l := tn2.node().Leader(); l != 4 {
		t.Fatalf("the new node 2 follows %d, want 4", l)
	}
}

package raftlog

import (
	"context"
	"math"
	"testing"
	"time"
)

// TestSnapshotBySize: with a count bound that is never reached, the nodes
// snapshot by bytes (SnapshotBytes), the in-memory log stays within its
// bound and Status.LogBytes matches what the storage holds; a follower
// stopped while the log is compacted past it catches up through a snapshot.
func TestSnapshotBySize(t *testing.T) {
	const snapBytes, msgBytes = 4096, 4096
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotBytes = snapBytes
		cfg.SnapshotEvery = math.MaxUint32 // only bytes trigger a snapshot
		cfg.MaxSizePerMsg = msgBytes
	})
	lead := c.leader(10 * time.Second)
	follower := lead%3 + 1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	check := func(when string) {
		t.Helper()
		for id, tn := range c.nodes {
			n := tn.node()
			if n == nil {
				continue
			}
			st := n.Status()
			if st.SnapshotIndex == 0 {
				t.Errorf("%s: node %d made no snapshot (status %+v)", when, id, st)
			}
			if held := n.storedBytes(0, math.MaxUint64); st.LogBytes != held {
				t.Errorf("%s: node %d reports LogBytes %d, its storage holds %d", when, id, st.LogBytes, held)
			}
			// Kept below the snapshot, applied since, one Ready's commits.
			if bound := uint64(2*snapBytes + msgBytes); st.LogBytes > bound {
				t.Errorf("%s: node %d holds %d bytes of entries in memory, bound %d", when, id, st.LogBytes, bound)
			}
		}
	}
	c.propose(ctx, "a", 4, 1000, nil)
	c.waitApplied(1000, 30*time.Second)
	c.checkIdentical()
	check("after 1000 entries")

	c.stop(follower)
	c.propose(ctx, "b", 4, 1000, nil)
	c.start(follower)
	c.waitApplied(2000, 30*time.Second)
	c.checkIdentical()
	if s := c.nodes[follower].app.snaps; s == 0 {
		t.Errorf("follower %d caught up without a snapshot; the leader should have compacted past it", follower)
	}
	check("after the follower's catch-up")
}

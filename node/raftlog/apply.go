package raftlog

import (
	"context"

	"go.etcd.io/raft/v3/raftpb"
)

// Applying a snapshot is the application's catch-up: the ledger fetches
// the blocks it lacks from its peers (Deliver), which takes as long as
// the transfer, or, when the peer it fetches from vanishes mid-stream,
// until that is noticed. The raft loop must not wait for it: a node that
// stops its loop neither ticks nor answers (pre-)votes, and with one of
// three consenters down the survivor asking for votes then gets none (the
// soak's leader fault after a relay fault, issue #9). So a snapshot is
// handed to Config.Apply in its own goroutine, and everything committed
// after it waits in n.pending, applied in log order once it returns. Apply
// is still never called concurrently with itself.

// applyJob is one unit of application work, in log order.
type applyJob struct {
	snap    *raftpb.Snapshot
	release bool // release the WAL up to the snapshot once applied
	ents    []raftpb.Entry
}

// applyPending applies queued jobs in order until one is a snapshot, which
// it starts in the background; with nothing left it may make a snapshot.
// Run goroutine only.
func (n *Node) applyPending(ctx context.Context) error {
	for n.snapRun == nil && len(n.pending) > 0 {
		j := n.pending[0]
		n.pending[0] = applyJob{}
		n.pending = n.pending[1:]
		if j.snap != nil {
			done := make(chan error, 1)
			s := *j.snap
			n.snapRun, n.snapRelease = done, 0
			if j.release {
				n.snapRelease = s.Metadata.Index
			}
			if n.inlineSnap {
				// A Stepper (one goroutine drives everything): the
				// catch-up runs here, and what waited for it follows.
				if err := n.snapshotDone(n.deliverSnapshot(ctx, s)); err != nil {
					return err
				}
				continue
			}
			go func() { done <- n.deliverSnapshot(ctx, s) }()
			break
		}
		ents := j.ents
		if len(n.pending) > 0 && n.pending[0].snap == nil {
			// Entries queued behind a snapshot (one job per Ready while
			// the catch-up ran) are applied in one call: one write and
			// one fsync of their blocks, not one per Ready (make e2e,
			// partition: ~170 blocks queued took 1.4 s to apply after a
			// 4.5 s catch-up). A fresh slice: raft's may share its log.
			ents = append(make([]raftpb.Entry, 0, len(ents)), ents...)
			for len(n.pending) > 0 && n.pending[0].snap == nil {
				ents = append(ents, n.pending[0].ents...)
				n.pending[0] = applyJob{}
				n.pending = n.pending[1:]
			}
		}
		for _, e := range ents {
			n.pendingBytes -= min(n.pendingBytes, uint64(len(e.Data)))
		}
		if err := n.apply(ctx, ents); err != nil {
			return err
		}
	}
	if n.snapRun != nil || len(n.pending) > 0 {
		return nil
	}
	n.pending, n.pendingBytes = nil, 0
	return n.maybeSnapshot()
}

// snapshotApplied ends the background snapshot with its result and
// applies what waited for it. Run goroutine only.
func (n *Node) snapshotApplied(ctx context.Context, err error) error {
	if err := n.snapshotDone(err); err != nil {
		return err
	}
	return n.applyPending(ctx)
}

// snapshotDone ends the snapshot being applied with its result: on
// success, releases the WAL it covers. Run goroutine only.
func (n *Node) snapshotDone(err error) error {
	n.snapRun = nil
	if err != nil {
		return err
	}
	if r := n.snapRelease; r != 0 {
		n.snapRelease = 0
		if err := n.wal.release(r); err != nil {
			return err
		}
	}
	return nil
}

// finishSnapshot waits until every queued job is applied, or ctx ends.
// Run goroutine only.
func (n *Node) finishSnapshot(ctx context.Context) error {
	for n.snapRun != nil {
		select {
		case err := <-n.snapRun:
			if err := n.snapshotApplied(ctx, err); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil // stopping: the loop sees ctx too
		}
	}
	return nil
}

// waitSnapshotApplied, when the loop ends, waits for a snapshot still
// being applied (its ctx is done, so Apply should return soon): Apply
// must not run after Run returned.
func (n *Node) waitSnapshotApplied() {
	if n.snapRun != nil {
		<-n.snapRun
		n.snapRun = nil
	}
}

// maxPendingBytes bounds the entry bytes queued behind a snapshot being
// applied before the loop waits for it (they pin the in-memory log, which
// cannot be compacted meanwhile): 4 × SnapshotBytes, at least 32 MiB, a
// few seconds of full load, time for a catch-up that makes progress.
func (n *Node) maxPendingBytes() uint64 {
	return max(4*n.cfg.SnapshotBytes, 32<<20, n.cfg.MaxSizePerMsg)
}

func hasConfChange(ents []raftpb.Entry) bool {
	for _, e := range ents {
		if e.Type == raftpb.EntryConfChange || e.Type == raftpb.EntryConfChangeV2 {
			return true
		}
	}
	return false
}

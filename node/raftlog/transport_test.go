package raftlog

import (
	"log/slog"
	"sync"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

type fakeReporter struct {
	mu          sync.Mutex
	unreachable []uint64
	snaps       map[uint64]raft.SnapshotStatus
}

func (f *fakeReporter) reportUnreachable(id uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unreachable = append(f.unreachable, id)
}

func (f *fakeReporter) reportSnapshot(id uint64, s raft.SnapshotStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snaps[id] = s
}

var _ reporter = (*fakeReporter)(nil)

// TestSendQueueBound: send never blocks; a full queue drops with a counted
// reason, tells raft once per call that the peer is unreachable, and fails
// a dropped snapshot.
func TestSendQueueBound(t *testing.T) {
	rep := &fakeReporter{snaps: map[uint64]raft.SnapshotStatus{}}
	tr := &transport{id: 1, report: rep, log: slog.New(slog.DiscardHandler),
		peers: map[uint64]*peer{2: {id: 2, q: make(chan raftpb.Message, 2)}}}
	msgs := []raftpb.Message{
		{Type: raftpb.MsgApp, To: 2}, {Type: raftpb.MsgApp, To: 2}, // queued
		{Type: raftpb.MsgApp, To: 2}, {Type: raftpb.MsgSnap, To: 2}, // dropped
		{Type: raftpb.MsgHeartbeat, To: 9}, // unknown peer
	}
	tr.send(msgs)
	st := tr.stats()
	if st.Dropped[DropQueueFull] != 2 || st.Dropped[DropUnknownPeer] != 1 {
		t.Errorf("dropped = %v", st.Dropped)
	}
	if len(rep.unreachable) != 1 || rep.unreachable[0] != 2 {
		t.Errorf("unreachable reports = %v, want [2]", rep.unreachable)
	}
	if rep.snaps[2] != raft.SnapshotFailure {
		t.Errorf("dropped snapshot not reported as failed: %v", rep.snaps)
	}
	if len(tr.peers[2].q) != 2 {
		t.Errorf("queue holds %d, want 2", len(tr.peers[2].q))
	}
	// A peer that cannot be dialed drains its queue as unreachable.
	tr.discard(tr.peers[2], laneBulk)
	if st := tr.stats(); st.Dropped[DropUnreachable] != 2 {
		t.Errorf("after discard: %v", st.Dropped)
	}
}

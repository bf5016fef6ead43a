package raftlog

// Bounding raft's in-memory log. raft reads entries from a MemoryStorage that
// holds every entry from the last compaction on. For the ledger each entry
// is a whole block (up to MaxEntryBytes), so a count of entries says little
// about memory: 10,000 blocks of 500 KB are 5 GB. The node therefore
// snapshots when the entries applied since the last snapshot hold
// SnapshotBytes (as Fabric etcdraft's SnapshotIntervalSize), as well as
// every SnapshotEvery entries, and after a snapshot keeps below it only what
// fits in CatchUpEntries and SnapshotBytes. The storage thus holds at most
// 2 × SnapshotBytes of applied entries, plus the committed entries of one
// Ready (at most MaxSizePerMsg, or one larger entry) and the entries not yet
// applied (on their way through raft: bounded by the load in flight). A
// follower that needs older entries gets a snapshot and fetches the blocks
// from its peers (Commit.Snapshot). What the leader has sent to a follower
// and not heard back about, which a compaction cannot free, is bounded by
// MaxInflightBytes (default 2 × SnapshotBytes).
//
// logBytes counts the Data bytes of the entries in storage (Status.LogBytes,
// raft_log_bytes); sinceSnap those applied since the last snapshot. Both
// are kept by the Run goroutine (logBytes is read by Status).

import (
	"errors"
	"math"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// dataBytes returns the bytes of entry data in ents.
func dataBytes(ents []raftpb.Entry) uint64 {
	var n uint64
	for i := range ents {
		n += uint64(len(ents[i].Data))
	}
	return n
}

// storedBytes returns the data bytes of the entries in [lo, hi) that
// storage holds (clamped to what it holds).
func (n *Node) storedBytes(lo, hi uint64) uint64 {
	first, _ := n.storage.FirstIndex()
	last, _ := n.storage.LastIndex()
	lo, hi = max(lo, first), min(hi, last+1)
	if lo >= hi {
		return 0
	}
	ents, err := n.storage.Entries(lo, hi, math.MaxUint64)
	if err != nil {
		return 0
	}
	return dataBytes(ents)
}

// appendLog appends ents to storage (raft's overwrite rule: entries from
// ents[0].Index on are replaced) and keeps logBytes.
func (n *Node) appendLog(ents []raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	first, _ := n.storage.FirstIndex()
	replaced := n.storedBytes(ents[0].Index, math.MaxUint64)
	if err := n.storage.Append(ents); err != nil {
		return err
	}
	var added uint64
	for i := range ents {
		if ents[i].Index >= first { // storage skips compacted ones
			added += uint64(len(ents[i].Data))
		}
	}
	n.logBytes.Store(n.logBytes.Load() - min(replaced, n.logBytes.Load()) + added)
	return nil
}

// applySnapshotLog replaces storage with snap (every entry is dropped).
func (n *Node) applySnapshotLog(snap raftpb.Snapshot) error {
	err := n.storage.ApplySnapshot(snap)
	if err == nil {
		n.logBytes.Store(0)
		n.sinceSnap = 0
	}
	if errors.Is(err, raft.ErrSnapOutOfDate) {
		return nil
	}
	return err
}

// snapshotDue reports whether enough has been applied since the last
// snapshot (entries or bytes) to make a new one.
func (n *Node) snapshotDue(applied uint64) bool {
	return applied-n.snapIndex.Load() >= n.cfg.SnapshotEvery || n.sinceSnap >= n.cfg.SnapshotBytes
}

// compactLog drops applied entries from storage after a snapshot at
// applied, keeping the newest ones below it, at most CatchUpEntries holding
// at most SnapshotBytes, for followers slightly behind.
func (n *Node) compactLog(applied uint64) error {
	first, _ := n.storage.FirstIndex()
	last, _ := n.storage.LastIndex()
	applied = min(applied, last)
	if applied < first {
		return nil
	}
	ents, err := n.storage.Entries(first, applied+1, math.MaxUint64)
	if err != nil {
		return nil // nothing in storage below applied
	}
	var keep, kept uint64
	for i := len(ents) - 1; i >= 0 && keep < n.cfg.CatchUpEntries; i-- {
		if kept += uint64(len(ents[i].Data)); kept > n.cfg.SnapshotBytes {
			break
		}
		keep++
	}
	ci := applied - keep
	if ci < first {
		return nil
	}
	dropped := dataBytes(ents[:ci-first+1])
	if err := n.storage.Compact(ci); err != nil && !errors.Is(err, raft.ErrCompacted) {
		return err
	}
	n.logBytes.Store(n.logBytes.Load() - min(dropped, n.logBytes.Load()))
	return nil
}

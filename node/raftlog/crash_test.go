package raftlog

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// crashPoint is a copy of a log directory taken between two durable steps,
// with what a restart from it must find: everything acknowledged so far.
type crashPoint struct {
	name   string
	dir    string
	snap   uint64 // snapshot index
	commit uint64 // at least this commit
	last   uint64 // at least this last index, entries up to it as in want
}

// wantTerm gives the term of entry i in the log the node acknowledged.
type wantTerm func(i uint64) uint64

func checkCrashPoint(t *testing.T, cp crashPoint, term wantTerm) {
	t.Helper()
	w, rec, err := openTestWAL(t, cp.dir)
	if err != nil {
		t.Errorf("%s: restart: %v", cp.name, err)
		return
	}
	defer w.close()
	last := rec.snap.Metadata.Index + uint64(len(rec.ents))
	switch {
	case rec.snap.Metadata.Index != cp.snap:
		t.Errorf("%s: snapshot at %d, want %d", cp.name, rec.snap.Metadata.Index, cp.snap)
	case rec.hs.Commit < cp.commit || rec.hs.Commit > last:
		t.Errorf("%s: commit %d, want %d..%d (last entry)", cp.name, rec.hs.Commit, cp.commit, last)
	case last < cp.last:
		t.Errorf("%s: last entry %d, want at least %d", cp.name, last, cp.last)
	}
	for k, e := range rec.ents {
		if want := cp.snap + 1 + uint64(k); e.Index != want || e.Term != term(e.Index) {
			t.Errorf("%s: entry %d has index %d term %d, want index %d term %d", cp.name, k, e.Index, e.Term, want, term(want))
			break
		}
	}
}

// newTestWAL opens a fresh log in a temporary directory, closed when the
// test ends.
func newTestWAL(t *testing.T) *wal {
	t.Helper()
	w, _, err := openTestWAL(t, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.close() })
	return w
}

// freeze copies dir as a crash at this point leaves it (every step before
// it was synced, so a crash keeps exactly what the files hold).
func freeze(t *testing.T, dir, name string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "crash")
	if err := os.CopyFS(dst, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestWALCrashWindowsInstallSnapshot walks a follower through the writes
// of installing a snapshot from the leader over a divergent log, then
// making its own snapshot and releasing segments, and restarts from a copy
// of the directory taken between every two durable steps, and from every
// torn prefix of the last log write (a crash before its fsync returned).
// The follower had committed 1..5 (term 1) and had uncommitted 6..12 of
// term 2; the leader of term 3 sends a snapshot at 10, then 11..14 with
// commit 12. Before the fix, the restart after the entries failed with
// "commit index 12 is past the last entry 10" (the tunnel simulation met it
// on a node restart): replay dropped the entries written after the
// snapshot along with the divergent ones.
func TestWALCrashWindowsInstallSnapshot(t *testing.T) {
	w := newTestWAL(t)
	dir := w.dir
	oldTerm := func(i uint64) uint64 {
		if i <= 5 {
			return 1
		}
		return 2
	}
	newTerm := func(i uint64) uint64 {
		if i <= 5 {
			return 1
		}
		return 3
	}
	var points []crashPoint
	var terms []wantTerm
	at := func(name string, snap, commit, last uint64, term wantTerm) {
		points = append(points, crashPoint{name: name, dir: freeze(t, dir, name), snap: snap, commit: commit, last: last})
		terms = append(terms, term)
	}
	mustSave(t, w, raftpb.HardState{Term: 1, Commit: 5}, ents(1, 1, 5))
	mustSave(t, w, raftpb.HardState{Term: 2, Commit: 5}, ents(2, 6, 12))
	at("divergent log", 0, 5, 12, oldTerm)

	snap := raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 3, ConfState: raftpb.ConfState{Voters: []uint64{7}}}}
	if err := w.saveSnapshot(snap); err != nil {
		t.Fatal(err)
	}
	at("snapshot file", 10, 10, 10, newTerm)
	if err := w.markInstalled(10, 3); err != nil {
		t.Fatal(err)
	}
	at("install record", 10, 10, 10, newTerm)

	seg := lastSegment(t, dir)
	st, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	before := st.Size()
	mustSave(t, w, raftpb.HardState{Term: 3, Commit: 12}, ents(3, 11, 14))
	at("entries after the snapshot", 10, 12, 14, newTerm)
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	for cut := before; cut < int64(len(data)); cut += 7 {
		cp := crashPoint{name: fmt.Sprintf("torn write at %d of %d..%d", cut, before, len(data)), dir: freeze(t, dir, ""), snap: 10, commit: 10, last: 10}
		if err := os.Truncate(filepath.Join(cp.dir, filepath.Base(seg)), cut); err != nil {
			t.Fatal(err)
		}
		points = append(points, cp)
		terms = append(terms, newTerm)
	}

	// The follower's own snapshot at 12, then release (a cut and the
	// deletion of covered segments).
	w.segBytes = 1
	local := raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 12, Term: 3, ConfState: raftpb.ConfState{Voters: []uint64{7}}}}
	if err := w.saveSnapshot(local); err != nil {
		t.Fatal(err)
	}
	at("local snapshot file", 12, 12, 14, newTerm)
	if err := w.release(12); err != nil {
		t.Fatal(err)
	}
	at("release", 12, 12, 14, newTerm)
	mustSave(t, w, raftpb.HardState{Term: 3, Commit: 15}, ents(3, 15, 15))
	at("entry after release", 12, 15, 15, newTerm)
	if err := w.saveSnapshot(raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 15, Term: 3, ConfState: raftpb.ConfState{Voters: []uint64{7}}}}); err != nil {
		t.Fatal(err)
	}
	nsegs := len(w.segs)
	if err := w.release(15); err != nil {
		t.Fatal(err)
	}
	if len(w.segs) >= nsegs {
		t.Fatalf("release(15) kept all %d segments", nsegs)
	}
	at("release of the segment with the install record", 15, 15, 15, newTerm)

	for i, cp := range points {
		checkCrashPoint(t, cp, terms[i])
	}
}

// TestRestartAfterSnapshotOverDivergentLog: the leader is cut off with
// uncommitted entries of its term in its log; the others elect a new
// leader, commit past them and snapshot (the scheduled snapshot compacts
// the entries the old leader lacks). After the heal the old leader, now a
// follower, gets that snapshot over its divergent log, then two entries
// after it, and restarts before its own next snapshot. It must start and
// keep those entries (before the fix: "commit index S+2 is past the last
// entry S", the tunnel simulation's seed 1, snapshotEvery 5).
func TestRestartAfterSnapshotOverDivergentLog(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery, cfg.CatchUpEntries = 5, 1 })
	old := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 3 {
		if _, err := c.nodes[old].node().ProposeWait(ctx, fmt.Appendf(nil, "a-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	c.waitApplied(3, 10*time.Second)
	on := c.nodes[old].node()
	c0 := on.Status().Commit
	c.net.Partition(fmt.Sprintf("n%d", old))
	const divergent = 20
	for i := range divergent {
		if err := on.Propose(ctx, fmt.Appendf(nil, "lost-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if last, _ := on.storage.LastIndex(); last >= c0+divergent {
			break
		}
		if time.Now().After(deadline) || on.Leader() != old {
			t.Skip("the isolated leader stepped down before appending its proposals; nothing to test")
		}
	}

	var lead uint64
	for deadline := time.Now().Add(10 * time.Second); lead == 0 || lead == old; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no new leader on the majority side")
		}
		for id, tn := range c.nodes {
			if l := tn.node().Leader(); id != old && l != 0 && l != old {
				lead = l
			}
		}
	}
	// Commit one entry at a time until the new leader has just made a
	// snapshot at its last entry, at least two past the old leader's commit
	// (so that the old leader cannot be caught up from the entries kept)
	// and inside its divergent entries.
	ln := c.nodes[lead].node()
	var snap uint64
	for i := 0; snap == 0; i++ {
		if i > 2*divergent {
			t.Fatalf("the new leader made no snapshot at its last entry (status %+v)", ln.Status())
		}
		if _, err := ln.ProposeWait(ctx, fmt.Appendf(nil, "b-%d", i)); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if st := ln.Status(); st.SnapshotIndex == st.Applied {
				if st.SnapshotIndex >= c0+3 {
					snap = st.SnapshotIndex
				}
				break
			}
		}
	}
	if snap > c0+divergent {
		t.Fatalf("snapshot at %d is past the old leader's divergent entries (%d..%d)", snap, c0+1, c0+divergent)
	}
	c.net.Heal(fmt.Sprintf("n%d", old))
	for deadline := time.Now().Add(20 * time.Second); on.Status().SnapshotIndex < snap; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the old leader did not install the snapshot at %d: %+v", snap, on.Status())
		}
	}
	for i := range 2 {
		if _, err := ln.ProposeWait(ctx, fmt.Appendf(nil, "c-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	want := c.nodes[lead].app.count()
	c.waitApplied(want, 10*time.Second)
	if st := on.Status(); st.SnapshotIndex != snap || st.Commit <= snap {
		t.Fatalf("old leader: snapshot %d commit %d, want snapshot %d and commit past it", st.SnapshotIndex, st.Commit, snap)
	}
	c.stop(old)
	c.start(old) // before the fix: Fatal, commit past the last entry
	if _, err := ln.ProposeWait(ctx, []byte("d")); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(want+1, 10*time.Second)
	c.checkIdentical()
}

// powerLoss copies dir as a power loss may leave it: each segment keeps
// what it held at its last fsync plus the first keep bytes written since
// (any prefix may reach the disk).
func powerLoss(t *testing.T, w *wal, keep int64) string {
	t.Helper()
	dst := freeze(t, w.dir, "")
	for _, s := range w.segs {
		p := filepath.Join(dst, filepath.Base(s.path))
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if n := min(st.Size(), s.synced+keep); n < st.Size() {
			if err := os.Truncate(p, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dst
}

// TestWALPowerLossAcrossCut: raft saves a HardState without fsync when
// only the commit moved (MustSync false); a snapshot right after it cuts a
// new segment. A power loss must not leave the older segment torn behind
// the durable new one: replay refuses a torn segment that is not the
// newest ("cut short ... but is not the newest segment"), so the node
// could not restart though nothing it acknowledged was lost. Before the
// fix cutSeq closed the old segment without syncing it.
func TestWALPowerLossAcrossCut(t *testing.T) {
	w := newTestWAL(t)
	mustSave(t, w, raftpb.HardState{Term: 1, Commit: 3}, ents(1, 1, 6))
	if err := w.save(raftpb.HardState{Term: 1, Commit: 6}, nil, false); err != nil {
		t.Fatal(err)
	}
	if err := w.cut(); err != nil {
		t.Fatal(err)
	}
	mustSave(t, w, raftpb.HardState{Term: 1, Commit: 6}, ents(1, 7, 8))
	for keep := range int64(40) {
		cp := crashPoint{name: fmt.Sprintf("power loss keeping %d unsynced bytes", keep), dir: powerLoss(t, w, keep), commit: 3, last: 8}
		checkCrashPoint(t, cp, func(uint64) uint64 { return 1 })
	}
}

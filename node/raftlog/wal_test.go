package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

func openTestWAL(t *testing.T, dir string) (*wal, *recovered, error) {
	t.Helper()
	return openWAL(dir, 7, "chan", 1<<20, 1<<16, slog.New(slog.DiscardHandler))
}

func ents(term uint64, from, to uint64) []raftpb.Entry {
	var out []raftpb.Entry
	for i := from; i <= to; i++ {
		out = append(out, raftpb.Entry{Term: term, Index: i, Data: []byte(fmt.Sprintf("e%d-t%d", i, term))})
	}
	return out
}

func mustSave(t *testing.T, w *wal, hs raftpb.HardState, es []raftpb.Entry) {
	t.Helper()
	if err := w.save(hs, es, true); err != nil {
		t.Fatal(err)
	}
}

func lastSegment(t *testing.T, dir string) string { return lastSegmentOf(t, dir) }

func lastSegmentOf(t *testing.T, dir string) string {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "wal-*.log"))
	if len(names) == 0 {
		t.Fatal("no segment")
	}
	return names[len(names)-1]
}

func TestWALReplayAndOverwrite(t *testing.T) {
	dir := t.TempDir()
	w, rec, err := openTestWAL(t, dir)
	if err != nil || !rec.fresh {
		t.Fatalf("open fresh: %v fresh=%v", err, rec != nil && rec.fresh)
	}
	mustSave(t, w, raftpb.HardState{Term: 1, Vote: 7, Commit: 3}, ents(1, 1, 10))
	// A new leader overwrites 6.. with term 2 entries.
	mustSave(t, w, raftpb.HardState{Term: 2, Vote: 0, Commit: 5}, ents(2, 6, 8))
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	w, rec, err = openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if rec.fresh || rec.hs.Term != 2 || rec.hs.Commit != 5 {
		t.Fatalf("recovered hs %+v fresh %v", rec.hs, rec.fresh)
	}
	if len(rec.ents) != 8 || rec.ents[7].Index != 8 || rec.ents[7].Term != 2 || rec.ents[4].Term != 1 {
		t.Fatalf("recovered %d entries, last %+v", len(rec.ents), rec.ents[len(rec.ents)-1])
	}
}

func TestWALTornTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		mess func(t *testing.T, path string, size int64)
	}{
		{"cut mid-record", func(t *testing.T, p string, size int64) { os.Truncate(p, size-5) }},
		{"cut mid-header", func(t *testing.T, p string, size int64) {
			os.Truncate(p, size-int64(len(appendRecord(nil, recEntry, nil)))-13)
		}},
		{"zero filled tail", func(t *testing.T, p string, size int64) {
			f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			f.Write(make([]byte, 4096))
			f.Close()
		}},
		{"cut mid-record, zero-filled block", func(t *testing.T, p string, size int64) {
			os.Truncate(p, size-5)
			f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			f.Write(make([]byte, 512))
			f.Close()
		}},
		{"garbage last record", func(t *testing.T, p string, size int64) {
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			f.WriteAt([]byte{0xde, 0xad}, size-3)
			f.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w, _, err := openTestWAL(t, dir)
			if err != nil {
				t.Fatal(err)
			}
			mustSave(t, w, raftpb.HardState{Term: 1, Commit: 5}, ents(1, 1, 5))
			mustSave(t, w, raftpb.HardState{}, ents(1, 6, 6)) // the record that gets torn
			w.close()
			p := lastSegment(t, dir)
			st, _ := os.Stat(p)
			tc.mess(t, p, st.Size())
			w, rec, err := openTestWAL(t, dir)
			if err != nil {
				t.Fatalf("recovery failed: %v", err)
			}
			if len(rec.ents) < 5 || rec.ents[4].Index != 5 || rec.hs.Commit != 5 {
				t.Fatalf("earlier records lost: %d entries, hs %+v", len(rec.ents), rec.hs)
			}
			// Appending after recovery works and survives another reopen.
			next := uint64(len(rec.ents)) + 1
			mustSave(t, w, raftpb.HardState{Term: 1, Commit: next}, ents(1, next, next))
			w.close()
			w, rec, err = openTestWAL(t, dir)
			if err != nil {
				t.Fatal(err)
			}
			w.close()
			if got := rec.ents[len(rec.ents)-1].Index; got != next || rec.hs.Commit != next {
				t.Fatalf("after re-append: last %d commit %d, want %d", got, rec.hs.Commit, next)
			}
		})
	}
}

func TestWALCorruptMiddle(t *testing.T) {
	dir := t.TempDir()
	w, _, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 20; i++ {
		mustSave(t, w, raftpb.HardState{Term: 1, Commit: i}, ents(1, i, i))
	}
	w.close()
	p := lastSegment(t, dir)
	st, _ := os.Stat(p)
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, st.Size()/2)
	f.Close()
	_, _, err = openTestWAL(t, dir)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	t.Logf("operator sees: %v", err)
}

func TestWALWrongNodeAndLock(t *testing.T) {
	dir := t.TempDir()
	w, _, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := openTestWAL(t, dir); !errors.Is(err, ErrLocked) {
		t.Errorf("second open: err = %v, want ErrLocked", err)
	}
	w.close()
	_, _, err = openWAL(dir, 8, "chan", 1<<20, 1<<16, slog.New(slog.DiscardHandler))
	if !errors.Is(err, ErrWrongDir) {
		t.Errorf("open as another node: err = %v, want ErrWrongDir", err)
	}
}

func TestWALSnapshotReleasesSegments(t *testing.T) {
	dir := t.TempDir()
	w, _, err := openWAL(dir, 7, "chan", 2048, 1<<16, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var idx uint64
	for round := 0; round < 5; round++ {
		for i := 0; i < 40; i++ {
			idx++
			mustSave(t, w, raftpb.HardState{Term: 1, Commit: idx}, ents(1, idx, idx))
		}
		snap := raftpb.Snapshot{Data: []byte("app"), Metadata: raftpb.SnapshotMetadata{Index: idx - 5, Term: 1,
			ConfState: raftpb.ConfState{Voters: []uint64{7}}}}
		if err := w.saveSnapshot(snap); err != nil {
			t.Fatal(err)
		}
		if err := w.release(idx - 5); err != nil {
			t.Fatal(err)
		}
	}
	w.close()
	segs, _ := filepath.Glob(filepath.Join(dir, "wal-*.log"))
	snaps, _ := filepath.Glob(filepath.Join(dir, "snap-*.snap"))
	if len(segs) > 2 || len(snaps) != 2 {
		t.Errorf("after compaction: %d segments, %d snapshot files; want <= 2 and 2", len(segs), len(snaps))
	}
	w, rec, err := openWAL(dir, 7, "chan", 2048, 1<<16, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if rec.snap.Metadata.Index != idx-5 || len(rec.ents) != 5 || rec.ents[4].Index != idx || string(rec.snap.Data) != "app" {
		t.Fatalf("recovered snapshot %d, %d entries", rec.snap.Metadata.Index, len(rec.ents))
	}
}

func TestDecodeRecordsClassification(t *testing.T) {
	var b []byte
	for i := 0; i < 3; i++ {
		b = appendRecord(b, recEntry, []byte("payload"))
	}
	full := len(b)
	recs, end, err := decodeRecords(b, 1024)
	if err != nil || end != full || len(recs) != 3 {
		t.Fatalf("clean: %d recs end %d err %v", len(recs), end, err)
	}
	rec := full / 3
	for _, tc := range []struct {
		name    string
		buf     []byte
		recs    int
		corrupt bool
	}{
		{"short header", b[:full-rec+3], 2, false},
		{"short body", b[:full-2], 2, false},
		{"flip in last", flip(b, full-1), 2, false},
		{"flip in first", flip(b, 10), 0, true},
		{"bad length in middle", flip(b, rec+3), 1, true},
		{"zero tail", append(append([]byte(nil), b...), make([]byte, 100)...), 3, false},
		{"torn last then zeros", append(append([]byte(nil), b[:full-4]...), make([]byte, 100)...), 2, false},
		{"flip in last then data", append(flip(b, full-1), appendRecord(nil, recEntry, []byte("more"))...), 2, true},
	} {
		recs, end, err := decodeRecords(tc.buf, 1024)
		if tc.corrupt != errors.Is(err, ErrCorrupt) || len(recs) != tc.recs {
			t.Errorf("%s: %d recs end %d err %v", tc.name, len(recs), end, err)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0xff
	return c
}

func FuzzDecodeRecords(f *testing.F) {
	var b []byte
	b = appendRecord(b, recMeta, meta{version: 1, nodeID: 7, cluster: "chan"}.marshal())
	hs, _ := (&raftpb.HardState{Term: 3, Commit: 2}).Marshal()
	b = appendRecord(b, recState, hs)
	e, _ := (&raftpb.Entry{Term: 3, Index: 1, Data: []byte("x")}).Marshal()
	b = appendRecord(b, recEntry, e)
	f.Add(b)
	f.Add(b[:len(b)-3])
	f.Add(append(b, 0, 0, 0, 0, 0, 0, 0, 0, 0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, end, err := decodeRecords(data, 1<<16)
		if end > len(data) {
			t.Fatalf("end %d > len %d", end, len(data))
		}
		if err == nil && end < len(data) {
			// a torn tail: decoding the valid prefix again must be clean
			r2, e2, err2 := decodeRecords(data[:end], 1<<16)
			if err2 != nil || e2 != end || len(r2) != len(recs) {
				t.Fatalf("prefix re-decode: %d/%d %v", e2, end, err2)
			}
		}
		for _, r := range recs {
			switch r.typ {
			case recMeta:
				parseMeta(r.payload)
			case recState:
				var hs raftpb.HardState
				hs.Unmarshal(r.payload)
			case recEntry:
				var e raftpb.Entry
				e.Unmarshal(r.payload)
			}
		}
	})
}

// TestWALInstalledSnapshotDropsDivergentLog: a follower had uncommitted
// entries 1..10 of term 1; the leader sent a snapshot at index 5 of term 2.
// After a restart the stale entries 6..10 must not come back.
func TestWALInstalledSnapshotDropsDivergentLog(t *testing.T) {
	dir := t.TempDir()
	w, _, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	mustSave(t, w, raftpb.HardState{Term: 1, Commit: 2}, ents(1, 1, 10))
	snap := raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 5, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{7}}}}
	if err := w.saveSnapshot(snap); err != nil {
		t.Fatal(err)
	}
	mustSave(t, w, raftpb.HardState{Term: 2, Commit: 5}, nil)
	w.close()
	w, rec, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if len(rec.ents) != 0 || rec.hs.Commit != 5 || rec.snap.Metadata.Index != 5 {
		t.Fatalf("recovered %d entries (first %v), hs %+v", len(rec.ents), rec.ents, rec.hs)
	}
}

// TestWALTornNewSegment: a crash while a new segment's first record was
// being written leaves a few bytes; recovery rewrites that segment and
// keeps everything before it.
func TestWALTornNewSegment(t *testing.T) {
	dir := t.TempDir()
	w, _, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	mustSave(t, w, raftpb.HardState{Term: 1, Commit: 4}, ents(1, 1, 4))
	if err := w.cut(); err != nil {
		t.Fatal(err)
	}
	w.close()
	p := lastSegment(t, dir)
	if err := os.Truncate(p, 3); err != nil {
		t.Fatal(err)
	}
	w, rec, err := openTestWAL(t, dir)
	if err != nil {
		t.Fatalf("recovery: %v", err)
	}
	if len(rec.ents) != 4 || rec.hs.Commit != 4 {
		t.Fatalf("recovered %d entries, hs %+v", len(rec.ents), rec.hs)
	}
	mustSave(t, w, raftpb.HardState{Term: 1, Commit: 5}, ents(1, 5, 5))
	w.close()
	w, rec, err = openTestWAL(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	w.close()
	if len(rec.ents) != 5 || rec.hs.Commit != 5 {
		t.Fatalf("after append: %d entries, hs %+v", len(rec.ents), rec.hs)
	}
}

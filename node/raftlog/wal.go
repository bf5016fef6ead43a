package raftlog

// The write-ahead log: the durable copy of raft's HardState and entries, plus
// snapshot files. Layout of Config.Dir:
//
//	LOCK                              flock(2) held while a Node has the dir open
//	wal-<seq %016x>.log               segments, records as in record.go
//	snap-<term %016x>-<index %016x>.snap   one recSnapshot record each
//
// Every segment starts with a recMeta record and, except the first, a copy of
// the HardState current when it was cut, so older segments can be deleted
// once a snapshot covers all their entries. Replay reads the segments in
// order; an entry with index i replaces the log from i on (raft's conflict
// truncation), the last HardState wins, a recInstall record (a snapshot
// installed from the leader, which replaces the whole log) drops every entry
// before it, and entries at or below the newest snapshot are dropped.
//
// Installing a snapshot from the leader, in this order, each step durable
// before the next (handleReady):
//
//  1. the snapshot file (saveSnapshot: temp file, fsync, rename, fsync dir);
//  2. the recInstall record (markInstalled, fsync);
//  3. the entries after the snapshot and the HardState (save).
//
// A crash after 1 leaves the newest snapshot file ahead of a log written
// before it: if that log has the snapshot's index with another term, it is
// the divergent log the snapshot replaced and is dropped whole (raft
// installs a snapshot only when its log does not match it there). After 2
// the marker drops it, and keeps the entries of 3, which a bare term check
// cannot tell from the divergent ones (they follow the divergent entry at
// the snapshot's index in the replayed log).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/memberd/memberd/internal/fsync"
)

type segment struct {
	seq      uint64
	path     string
	maxIndex uint64 // highest entry index written to it (0: none)
	// synced: its size at its last fsync; a power loss may drop any part
	// of what was written after it (crash_test.go models that).
	synced int64
}

type wal struct {
	dir      string
	lock     *os.File
	f        *os.File
	size     int64
	segs     []segment // oldest first; the last is the one being written
	meta     []byte
	hs       raftpb.HardState // last HardState written
	buf      []byte
	segBytes int64
	maxBody  int
	log      *slog.Logger
	noSync   bool // Stepper.UnsafeNoSync: a planted bug (simulation only)
	// noInstall: Stepper.UnsafeNoInstallRecord, a planted bug (simulation
	// only): markInstalled writes nothing.
	noInstall bool
	// crashIn (Stepper.CrashAt, simulation only): when it counts down to
	// 0, the next save, saveSnapshot or markInstalled (of kind crashOp,
	// when set) fails with ErrCrashPoint before writing; 0 is off.
	crashIn int
	crashOp string
}

// crashPoint counts a write down towards Stepper.CrashAt's crash point.
func (w *wal) crashPoint(op string) error {
	if w.crashIn == 0 || (w.crashOp != "" && w.crashOp != op) {
		return nil
	}
	if w.crashIn--; w.crashIn == 0 {
		return fmt.Errorf("%w: before %s", ErrCrashPoint, op)
	}
	return nil
}

// recovered is what replay found on disk.
type recovered struct {
	fresh bool // no segment existed
	snap  raftpb.Snapshot
	hs    raftpb.HardState
	ents  []raftpb.Entry
}

func segName(seq uint64) string { return fmt.Sprintf("wal-%016x.log", seq) }

func snapName(term, index uint64) string {
	return fmt.Sprintf("snap-%016x-%016x.snap", term, index)
}

// openWAL locks dir, replays it, repairs a torn tail and opens the newest
// segment for appending (or creates the first one).
func openWAL(dir string, id uint64, cluster string, segBytes int64, maxBody int, log *slog.Logger) (*wal, *recovered, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("raft log directory %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("raft log directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("%w: %s is used by another process (flock: %v)", ErrLocked, dir, err)
	}
	w := &wal{dir: dir, lock: lock, segBytes: segBytes, maxBody: maxBody, log: log,
		meta: meta{version: walVersion, nodeID: id, cluster: cluster}.marshal()}
	rec, err := w.replay(id, cluster)
	if err != nil {
		lock.Close()
		return nil, nil, err
	}
	if rec.fresh {
		if err := w.cut(); err != nil {
			w.close()
			return nil, nil, err
		}
	}
	return w, rec, nil
}

func (w *wal) replay(id uint64, cluster string) (*recovered, error) {
	rec := &recovered{}
	snap, err := w.loadNewestSnapshot()
	if err != nil {
		return nil, err
	}
	rec.snap = snap
	names, err := filepath.Glob(filepath.Join(w.dir, "wal-*.log"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	if len(names) == 0 {
		rec.fresh = raft.IsEmptySnap(snap)
		if !rec.fresh {
			return nil, fmt.Errorf("%w: %s has a snapshot but no log segment", ErrCorrupt, w.dir)
		}
		return rec, nil
	}
	var ents []raftpb.Entry
	var installIndex, installTerm uint64 // the last recInstall record
	for i, name := range names {
		var seq uint64
		if _, err := fmt.Sscanf(filepath.Base(name), "wal-%016x.log", &seq); err != nil {
			return nil, fmt.Errorf("%w: unexpected file %s", ErrCorrupt, name)
		}
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		last := i == len(names)-1
		recs, end, derr := decodeRecords(data, w.maxBody)
		if derr != nil {
			return nil, fmt.Errorf("raft log segment %s: %w (the log cannot be trusted; restore this node's directory or remove it and rejoin the cluster)", name, derr)
		}
		if end < len(data) {
			if !last {
				return nil, fmt.Errorf("%w: raft log segment %s is cut short at offset %d but is not the newest segment", ErrCorrupt, name, end)
			}
			w.log.Warn("raft log: torn tail truncated", "segment", name, "offset", end, "dropped_bytes", len(data)-end)
			if err := truncateSync(name, int64(end)); err != nil {
				return nil, err
			}
		}
		seg := segment{seq: seq, path: name, synced: int64(end)}
		for j, r := range recs {
			switch r.typ {
			case recMeta:
				m, err := parseMeta(r.payload)
				if err != nil || j != 0 {
					return nil, fmt.Errorf("%w: %s offset %d: bad meta record", ErrCorrupt, name, r.off)
				}
				if m.version != walVersion {
					return nil, fmt.Errorf("%w: %s has format version %d, this build reads %d", ErrCorrupt, name, m.version, walVersion)
				}
				if m.nodeID != id || m.cluster != cluster {
					return nil, fmt.Errorf("%w: %s belongs to node %d of cluster %q, not node %d of %q: check Dir", ErrWrongDir, w.dir, m.nodeID, m.cluster, id, cluster)
				}
			case recState:
				var hs raftpb.HardState
				if err := hs.Unmarshal(r.payload); err != nil {
					return nil, fmt.Errorf("%w: %s offset %d: hard state: %v", ErrCorrupt, name, r.off, err)
				}
				rec.hs = hs
			case recEntry:
				var e raftpb.Entry
				if err := e.Unmarshal(r.payload); err != nil {
					return nil, fmt.Errorf("%w: %s offset %d: entry: %v", ErrCorrupt, name, r.off, err)
				}
				ents = appendReplay(ents, e)
				seg.maxIndex = max(seg.maxIndex, e.Index)
			case recInstall:
				if len(r.payload) != 16 {
					return nil, fmt.Errorf("%w: %s offset %d: bad snapshot install record", ErrCorrupt, name, r.off)
				}
				installIndex = binary.BigEndian.Uint64(r.payload[0:8])
				installTerm = binary.BigEndian.Uint64(r.payload[8:16])
				ents = ents[:0] // the snapshot replaced the log
			default:
				return nil, fmt.Errorf("%w: %s offset %d: unknown record type %d", ErrCorrupt, name, r.off, r.typ)
			}
		}
		if len(recs) == 0 || recs[0].typ != recMeta {
			if !last || len(recs) != 0 {
				return nil, fmt.Errorf("%w: %s does not start with a meta record", ErrCorrupt, name)
			}
			// The newest segment was torn before its meta record reached the
			// disk: rewrite it.
			if err := os.Remove(name); err != nil {
				return nil, err
			}
			w.hs = rec.hs
			if err := w.cutSeq(seq); err != nil {
				return nil, err
			}
			continue
		}
		w.segs = append(w.segs, seg)
	}
	if installIndex > snap.Metadata.Index {
		// markInstalled runs only once the snapshot file is durable, and
		// release keeps the newest snapshot file.
		return nil, fmt.Errorf("%w: %s: the log records the snapshot at index %d (term %d) installed from the leader, but the newest snapshot file ends at %d: "+
			"the file system lost synced data or a snapshot file was removed (%s); restore this node's directory or remove it and rejoin the cluster",
			ErrCorrupt, w.dir, installIndex, installTerm, snap.Metadata.Index, snapName(installTerm, installIndex))
	}
	// A crash between the snapshot file and its recInstall record
	// (saveSnapshot, markInstalled): if the replayed log has the snapshot's
	// index with another term, it was all written before the snapshot
	// replaced it, and is dropped. (After a recInstall record the log
	// restarts past its snapshot, so this cannot match there.)
	for _, e := range ents {
		if e.Index == snap.Metadata.Index && e.Term != snap.Metadata.Term {
			ents = ents[:0]
			break
		}
	}
	// Drop what the snapshot covers and check continuity.
	k := 0
	for k < len(ents) && ents[k].Index <= snap.Metadata.Index {
		k++
	}
	ents = ents[k:]
	if len(ents) > 0 && ents[0].Index != snap.Metadata.Index+1 {
		return nil, fmt.Errorf("%w: %s: log resumes at index %d but the snapshot ends at %d: entries %d..%d are missing "+
			"(the file system lost synced data, or a segment or snapshot file was removed); restore this node's directory or remove it and rejoin the cluster",
			ErrCorrupt, w.dir, ents[0].Index, snap.Metadata.Index, snap.Metadata.Index+1, ents[0].Index-1)
	}
	rec.ents = ents
	if rec.hs.Commit < snap.Metadata.Index {
		rec.hs.Commit = snap.Metadata.Index // a snapshot is committed by definition
	}
	if rec.hs.Term < snap.Metadata.Term {
		rec.hs.Term, rec.hs.Vote = snap.Metadata.Term, 0
	}
	lastIndex := snap.Metadata.Index + uint64(len(ents))
	if rec.hs.Commit > lastIndex {
		// Entries and HardState are written in that order and synced
		// together, and a snapshot only ever drops entries it covers: the
		// node acknowledged entries that are no longer here. (Builds
		// before recInstall records could leave this after installing a
		// snapshot over a divergent log: replay cannot tell the entries
		// after it from the divergent ones.)
		return nil, fmt.Errorf("%w: %s: commit index %d is past the last entry %d: committed entries %d..%d are missing "+
			"(the file system lost synced data, a segment file was removed, or an older build installed a leader's snapshot without recording it); "+
			"restore this node's directory or remove it and rejoin the cluster",
			ErrCorrupt, w.dir, rec.hs.Commit, lastIndex, lastIndex+1, rec.hs.Commit)
	}
	if w.f == nil { // not reopened by cutSeq above
		cur := w.segs[len(w.segs)-1]
		f, err := os.OpenFile(cur.path, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		w.f, w.size = f, st.Size()
		w.segs[len(w.segs)-1].synced = w.size
	}
	w.hs = rec.hs
	return rec, nil
}

// appendReplay adds e to the replayed log with raft's overwrite rule.
func appendReplay(ents []raftpb.Entry, e raftpb.Entry) []raftpb.Entry {
	if len(ents) == 0 {
		return append(ents, e)
	}
	first, last := ents[0].Index, ents[len(ents)-1].Index
	switch {
	case e.Index <= first:
		return append(ents[:0], e)
	case e.Index <= last+1:
		return append(ents[:e.Index-first], e)
	default: // gap: only legal below a snapshot; checked after replay
		return append(ents[:0], e)
	}
}

func truncateSync(name string, size int64) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

// save appends entries then the HardState (if any) and fsyncs when sync.
func (w *wal) save(hs raftpb.HardState, ents []raftpb.Entry, sync bool) error {
	if raft.IsEmptyHardState(hs) && len(ents) == 0 {
		return nil
	}
	if err := w.crashPoint(CrashSave); err != nil {
		return err
	}
	b := w.buf[:0]
	cur := &w.segs[len(w.segs)-1]
	for i := range ents {
		sz := ents[i].Size()
		if sz+1 > w.maxBody {
			return fmt.Errorf("%w: entry %d is %d bytes, limit %d", ErrTooLarge, ents[i].Index, sz, w.maxBody-1)
		}
		b = growRecord(b, recEntry, sz)
		if _, err := ents[i].MarshalTo(b[len(b)-sz:]); err != nil {
			return err
		}
		sealRecord(b, sz)
		cur.maxIndex = max(cur.maxIndex, ents[i].Index)
	}
	if !raft.IsEmptyHardState(hs) {
		p, err := hs.Marshal()
		if err != nil {
			return err
		}
		b = appendRecord(b, recState, p)
		w.hs = hs
	}
	w.buf = b
	if _, err := w.f.Write(b); err != nil {
		return fmt.Errorf("raft log write %s: %w", w.f.Name(), err)
	}
	w.size += int64(len(b))
	if sync {
		if err := w.sync(); err != nil {
			return err
		}
	}
	if cap(w.buf) > 4<<20 {
		w.buf = nil // do not pin a huge buffer after a burst
	}
	return nil
}

// growRecord reserves a record of payload size sz at the end of b; the caller
// fills the payload and calls sealRecord.
func growRecord(b []byte, typ byte, sz int) []byte {
	b = append(b, make([]byte, recordHeaderLen+1+sz)...)
	b[len(b)-sz-1] = typ
	return b
}

func sealRecord(b []byte, sz int) {
	start := len(b) - sz - 1 - recordHeaderLen
	body := b[start+recordHeaderLen:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(body, crcTable))
}

// cut starts a new segment: meta record, current HardState, fsync file and dir.
func (w *wal) cut() error {
	var seq uint64
	if len(w.segs) > 0 {
		seq = w.segs[len(w.segs)-1].seq + 1
	}
	return w.cutSeq(seq)
}

func (w *wal) cutSeq(seq uint64) error {
	// The segment being closed may end with a HardState saved without
	// fsync (raft's MustSync is false when only the commit moved): sync it
	// first, or a power loss could leave it torn behind a durable newer
	// segment, which replay must refuse (only the newest may be torn).
	if w.f != nil {
		if err := w.sync(); err != nil {
			return err
		}
	}
	path := filepath.Join(w.dir, segName(seq))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("raft log: new segment: %w", err)
	}
	b := appendRecord(nil, recMeta, w.meta)
	if !raft.IsEmptyHardState(w.hs) {
		p, _ := w.hs.Marshal()
		b = appendRecord(b, recState, p)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := fsync.Dir(w.dir); err != nil {
		f.Close()
		return err
	}
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			f.Close()
			return err
		}
	}
	w.f, w.size = f, int64(len(b))
	w.segs = append(w.segs, segment{seq: seq, path: path, synced: w.size})
	return nil
}

// saveSnapshot writes snap to its own file durably (temp, fsync, rename,
// fsync dir). It must complete before the log is compacted past it.
func (w *wal) saveSnapshot(snap raftpb.Snapshot) error {
	if err := w.crashPoint(CrashSnapshotFile); err != nil {
		return err
	}
	p, err := snap.Marshal()
	if err != nil {
		return err
	}
	name := filepath.Join(w.dir, snapName(snap.Metadata.Term, snap.Metadata.Index))
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, appendRecord(nil, recSnapshot, p), 0o600); err != nil {
		return fmt.Errorf("raft snapshot %s: %w", tmp, err)
	}
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("raft snapshot fsync %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	return fsync.Dir(w.dir)
}

// markInstalled records, durably, that the snapshot at index (term) was
// installed from the leader and replaced the log: replay drops every entry
// written before this record. Call it after saveSnapshot and before saving
// the entries that follow the snapshot.
func (w *wal) markInstalled(index, term uint64) error {
	if err := w.crashPoint(CrashInstallRecord); err != nil {
		return err
	}
	if w.noInstall {
		return nil
	}
	var p [16]byte
	binary.BigEndian.PutUint64(p[0:8], index)
	binary.BigEndian.PutUint64(p[8:16], term)
	b := appendRecord(nil, recInstall, p[:])
	if _, err := w.f.Write(b); err != nil {
		return fmt.Errorf("raft log write %s: %w", w.f.Name(), err)
	}
	w.size += int64(len(b))
	return w.sync()
}

// sync fsyncs the segment being written.
func (w *wal) sync() error {
	if w.noSync {
		return nil
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("raft log fsync %s: %w", w.f.Name(), err)
	}
	w.segs[len(w.segs)-1].synced = w.size
	return nil
}

func (w *wal) loadNewestSnapshot() (raftpb.Snapshot, error) {
	names, err := filepath.Glob(filepath.Join(w.dir, "snap-*.snap"))
	if err != nil {
		return raftpb.Snapshot{}, err
	}
	tmps, _ := filepath.Glob(filepath.Join(w.dir, "snap-*.snap.tmp"))
	for _, t := range tmps {
		os.Remove(t) // never renamed: not durable, not used
	}
	sort.Strings(names) // fixed-width hex term then index: newest last
	if len(names) == 0 {
		return raftpb.Snapshot{}, nil
	}
	name := names[len(names)-1]
	data, err := os.ReadFile(name)
	if err != nil {
		return raftpb.Snapshot{}, err
	}
	recs, end, derr := decodeRecords(data, len(data)+1)
	if derr != nil || end != len(data) || len(recs) != 1 || recs[0].typ != recSnapshot {
		return raftpb.Snapshot{}, fmt.Errorf("%w: snapshot file %s is damaged (restore the directory or remove it and rejoin)", ErrCorrupt, name)
	}
	var s raftpb.Snapshot
	if err := s.Unmarshal(recs[0].payload); err != nil {
		return raftpb.Snapshot{}, fmt.Errorf("%w: snapshot file %s: %v", ErrCorrupt, name, err)
	}
	return s, nil
}

// release cuts a new segment when the current one is big, deletes segments
// whose entries are all covered by the durable snapshot at snapIndex, and
// keeps the two newest snapshot files.
func (w *wal) release(snapIndex uint64) error {
	if w.size >= w.segBytes {
		if err := w.cut(); err != nil {
			return err
		}
	}
	n := 0
	for n < len(w.segs)-1 && w.segs[n].maxIndex <= snapIndex {
		if err := os.Remove(w.segs[n].path); err != nil {
			return err
		}
		n++
	}
	w.segs = append(w.segs[:0], w.segs[n:]...)
	names, _ := filepath.Glob(filepath.Join(w.dir, "snap-*.snap"))
	sort.Strings(names)
	for i := 0; i+2 < len(names); i++ {
		if strings.HasSuffix(names[i], ".snap") {
			os.Remove(names[i])
		}
	}
	if n > 0 {
		return fsync.Dir(w.dir)
	}
	return nil
}

func (w *wal) close() error {
	var errs []error
	if w.f != nil {
		errs = append(errs, w.f.Sync(), w.f.Close())
		w.f = nil
	}
	if w.lock != nil {
		errs = append(errs, w.lock.Close())
		w.lock = nil
	}
	return errors.Join(errs...)
}

// StoredID returns the node ID and cluster that the log in dir was written
// for (its oldest segment's meta record), without locking or replaying it;
// id 0 when dir holds no log yet. An application uses it to restart a node
// whose ID it cannot otherwise know (e.g. one added with AddPeer).
func StoredID(dir string) (id uint64, cluster string, err error) {
	names, err := filepath.Glob(filepath.Join(dir, "wal-*.log"))
	if err != nil || len(names) == 0 {
		return 0, "", err
	}
	sort.Strings(names)
	f, err := os.Open(names[0])
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	buf := make([]byte, recordHeaderLen+1+11+255)
	n, _ := io.ReadFull(f, buf)
	buf = buf[:n]
	if len(buf) < recordHeaderLen+1 || buf[recordHeaderLen] != recMeta {
		return 0, "", nil // torn before its meta record: no log yet
	}
	body := int(binary.LittleEndian.Uint32(buf[0:4]))
	if body < 1 || recordHeaderLen+body > len(buf) ||
		crc32.Checksum(buf[recordHeaderLen:recordHeaderLen+body], crcTable) != binary.LittleEndian.Uint32(buf[4:8]) {
		return 0, "", fmt.Errorf("%w: %s: bad meta record", ErrCorrupt, names[0])
	}
	m, err := parseMeta(buf[recordHeaderLen+1 : recordHeaderLen+body])
	if err != nil {
		return 0, "", fmt.Errorf("%w: %s: bad meta record", ErrCorrupt, names[0])
	}
	return m.nodeID, m.cluster, nil
}

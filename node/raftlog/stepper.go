package raftlog

// Stepper: a Node driven by one goroutine, for deterministic simulation
// (test/sim/det). It has the Node's storage (the same WAL, snapshot files
// and in-memory log), its Ready handling (handleReady: persist, send,
// apply, snapshot) and its Apply contract, over an etcd raft RawNode
// instead of raft.Node, with no transport, no timers and no goroutines:
// the caller ticks it, hands it the messages other nodes sent it, and gets
// the messages it sends through a function. What is not covered: Run's
// loop and batcher, the transport, ProposeWait's channels (Applied polls
// the same waiter), and the snapshot catch-up running beside the loop
// (a Stepper applies a snapshot on the calling goroutine).

import (
	"context"
	"errors"
	"net"
	"os"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Stepper is a Node driven by the caller's goroutine. It is not safe for
// concurrent use.
type Stepper struct {
	n   *Node
	rn  *raft.RawNode
	ctx context.Context
	// waits: the proposals' waiters (apply drops them from n.waits when
	// it wakes them).
	waits map[uint64]*waiter
}

// NewStepper opens cfg.Dir as New does and starts raft on a RawNode; each
// Ready's messages go to send (which must not call back into the
// Stepper). cfg.Dialer and cfg.Listener may be nil (they are not used).
func NewStepper(cfg Config, send func([]raftpb.Message)) (*Stepper, error) {
	if cfg.Dialer == nil {
		cfg.Dialer = noDialer{}
	}
	if cfg.Listener == nil {
		cfg.Listener = noListener{}
	}
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	rc, boot, peers := n.raftConfig()
	rn, err := raft.NewRawNode(rc)
	if err == nil && boot {
		err = rn.Bootstrap(peers)
	}
	if err != nil {
		n.wal.close()
		return nil, err
	}
	n.core, n.out, n.inlineSnap = rn, send, true
	n.applied.Store(rc.Applied)
	s := &Stepper{n: n, rn: rn, ctx: context.Background(), waits: map[uint64]*waiter{}}
	if err := n.applyLocalSnapshot(s.ctx); err != nil {
		n.wal.close()
		return nil, err
	}
	return s, nil
}

// Tick advances raft's logical clock by one tick (as Run's ticker).
func (s *Stepper) Tick() {
	if s.n.retired.Load() && s.n.lead.Load() == 0 {
		return
	}
	s.rn.Tick()
}

// Step hands raft a message from another node.
func (s *Stepper) Step(m raftpb.Message) error { return s.rn.Step(m) }

// Propose hands data to raft as ProposeWait does, and returns the
// proposal's sequence for Applied. It fails with ErrDropped when raft
// drops it (no leader known, or a leadership transfer).
func (s *Stepper) Propose(data []byte) (uint64, error) {
	n := s.n
	if len(data) > n.cfg.MaxEntryBytes {
		return 0, ErrTooLarge
	}
	seq, buf := n.envelope(data)
	w := &waiter{data: buf[propHeaderLen:], ch: make(chan uint64, 1)}
	n.wmu.Lock()
	n.waits[seq] = w
	n.wmu.Unlock()
	s.waits[seq] = w
	if err := s.rn.Step(raftpb.Message{Type: raftpb.MsgProp, From: n.cfg.ID, Entries: []raftpb.Entry{{Data: buf}}}); err != nil {
		s.Forget(seq)
		return 0, mapRaftErr(err)
	}
	return seq, nil
}

// Applied reports whether the proposal seq has committed and been
// applied here (ProposeWait would have returned), with its index; it then
// forgets seq.
func (s *Stepper) Applied(seq uint64) (uint64, bool) {
	w := s.waits[seq]
	if w == nil {
		return 0, false
	}
	select {
	case idx := <-w.ch:
		s.Forget(seq)
		return idx, true
	default:
		return 0, false
	}
}

// Forget drops the waiter of proposal seq (ProposeWait gave up).
func (s *Stepper) Forget(seq uint64) {
	delete(s.waits, seq)
	s.n.wmu.Lock()
	delete(s.n.waits, seq)
	s.n.wmu.Unlock()
}

// Process handles one Ready if raft has one (persist, send, apply, as Run
// does) and reports whether it did. An error is fatal for the node, as
// for Run.
func (s *Stepper) Process() (bool, error) {
	if !s.rn.HasReady() {
		return false, nil
	}
	rd := s.rn.Ready()
	if err := s.n.handleReady(s.ctx, rd); err != nil {
		return true, err
	}
	s.rn.Advance(rd)
	return true, nil
}

// ReportUnreachable and ReportSnapshot tell raft what the transport would.
func (s *Stepper) ReportUnreachable(id uint64) { s.rn.ReportUnreachable(id) }

func (s *Stepper) ReportSnapshot(id uint64, st raft.SnapshotStatus) { s.rn.ReportSnapshot(id, st) }

// Retire is Node.Retire.
func (s *Stepper) Retire(on bool) bool { return s.n.Retire(on) }

// TermLead is raft's current term and the leader it knows, as of the
// last Step or Tick (Status's follow the Readies handled).
func (s *Stepper) TermLead() (term, lead uint64) {
	st := s.rn.BasicStatus()
	return st.Term, st.Lead
}

// LogTerm is the term of the entry at index i in the stored log, if it
// holds it (for a simulation to see what a snapshot would replace).
func (s *Stepper) LogTerm(i uint64) (uint64, bool) {
	t, err := s.n.storage.Term(i)
	return t, err == nil
}

// Status is Node.Status.
func (s *Stepper) Status() Status { return s.n.Status() }

// Close closes the log (fsync, unlock), as Node.Close.
func (s *Stepper) Close() error { return s.n.wal.close() }

// UnsafeNoSync makes the log skip its fsyncs from now on (the segments'
// records; new segments and snapshot files are still synced): a planted
// bug, for a simulation to show that it finds it. Never in production.
func (s *Stepper) UnsafeNoSync() { s.n.wal.noSync = true }

// UnsafeNoInstallRecord makes the log skip the recInstall record after
// a snapshot installed from the leader (markInstalled writes nothing): a
// planted bug, for a simulation to show that it finds it. Never in
// production.
func (s *Stepper) UnsafeNoInstallRecord() { s.n.wal.noInstall = true }

// ChangeMembership proposes c as Node.ChangeMembership does (the same
// conf change and context, applied by the same code) and returns the
// proposal's sequence: Applied(seq) reports when it is applied here. It
// fails with ErrDropped when raft drops it (no leader known, or another
// membership change pending).
func (s *Stepper) ChangeMembership(c MembershipChange) (uint64, error) {
	n := s.n
	cc := raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: c.Peer.ID}
	p := c.Peer
	if c.Remove {
		cc.Type, p = raftpb.ConfChangeRemoveNode, Peer{}
	}
	seq := n.seq.Add(1)
	cc.Context = confContext(n.cfg.ID, seq, p, c.Version)
	w := &waiter{ch: make(chan uint64, 1)}
	n.wmu.Lock()
	n.waits[seq] = w
	n.wmu.Unlock()
	s.waits[seq] = w
	if err := s.rn.ProposeConfChange(cc); err != nil {
		s.Forget(seq)
		return 0, mapRaftErr(err)
	}
	return seq, nil
}

// ErrCrashPoint: the write Stepper.CrashAt chose was reached; the node
// stops there, as if the process died before it (call Crash).
var ErrCrashPoint = errors.New("raftlog: simulated crash point")

// CrashAt makes the k-th log write from now (k >= 1) of kind op fail with
// ErrCrashPoint before it writes anything, so that a simulation can stop
// a node between any two steps of a Ready, e.g. between a leader's
// snapshot file and its install record. op is CrashSave (entries and
// HardState), CrashSnapshotFile, CrashInstallRecord, or "" for any. k 0
// turns it off.
func (s *Stepper) CrashAt(k int, op string) { s.n.wal.crashIn, s.n.wal.crashOp = max(k, 0), op }

// The kinds of log write, for CrashAt.
const (
	CrashSave          = "save"
	CrashSnapshotFile  = "snapshot file"
	CrashInstallRecord = "install record"
)

// Crash closes the log as a crash would: nothing more is synced. keep
// chooses, for each segment, how many of the bytes written since its last
// fsync survive (0 <= keep <= unsynced; a power loss may keep any prefix,
// a process crash keeps them all), and how many zero bytes follow them
// (a file system may leave blocks it allocated but never wrote zeroed),
// within the unsynced length.
func (s *Stepper) Crash(keep func(unsynced int64) (kept, zeros int64)) error {
	w := s.n.wal
	var errs []error
	if w.f != nil {
		errs = append(errs, w.f.Close())
		w.f = nil
	}
	if w.lock != nil {
		errs = append(errs, w.lock.Close())
		w.lock = nil
	}
	for _, sg := range w.segs {
		st, err := os.Stat(sg.path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		un := st.Size() - sg.synced
		if un <= 0 {
			continue
		}
		k, z := keep(un)
		k = min(max(k, 0), un)
		z = min(max(z, 0), un-k)
		if k == un {
			continue
		}
		errs = append(errs, os.Truncate(sg.path, sg.synced+k))
		if z > 0 {
			errs = append(errs, os.Truncate(sg.path, sg.synced+k+z)) // extends with zeros
		}
	}
	return errors.Join(errs...)
}

type noDialer struct{}

func (noDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("raftlog: a Stepper does not dial")
}

type noListener struct{}

func (noListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (noListener) Close() error              { return nil }
func (noListener) Addr() net.Addr            { return &net.TCPAddr{} }

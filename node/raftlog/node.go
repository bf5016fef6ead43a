// Package raftlog is the replicated log under the ledger node: etcd raft
// (go.etcd.io/raft/v3) with this package owning storage (a write-ahead log
// and snapshot files in Config.Dir, fsynced before any message is sent) and
// transport (frames over the injected Dialer and Listener).
//
// Lifecycle:
//
//	n, err := raftlog.New(cfg)  // opens and replays Dir; starts nothing
//	go n.Run(ctx)               // raft, transport and the Ready loop; returns when ctx ends, Close is called or on a fatal error
//	n.ProposeWait(ctx, data)    // from any goroutine
//	n.Close()                   // stops Run, closes the listener and the log; idempotent
//
// Committed entries reach the application through Config.Apply, in log
// order, on the Run goroutine; apply must depend only on the log. When this
// node falls so far behind that the leader sends a snapshot, Apply gets a
// Commit with Snapshot set (the application data of Config.SnapshotData on
// the leader), and the application fetches what it lacks from peers.
//
// Durability: every Ready's snapshot, entries and HardState are written and
// fsynced (wal.go) before this node sends any message that depends on them
// and before they are applied. The one exception is the leader's own
// appends and heartbeats, which go out while the leader fsyncs (Raft thesis
// 10.2.1, as in etcd): raft counts the leader's copy only after the fsync,
// so commit still means "durable on a majority". ProposeWait returns only
// after commit and local Apply.
//
// Membership: the consenters given at bootstrap, then AddPeer/RemovePeer
// (raft conf changes carrying the peer's ID, name and address; membership.go).
// The log, and the snapshots, carry the membership map, so a restart or a
// joining node needs no addresses in Config.Peers; raft IDs and the cluster
// name are checked in the transport handshake. A node whose ID is removed
// stays running but takes no part in consensus (Removed); a leader that
// removes itself steps down.
//
// Wiring for the ordering node: the leader (OnLeaderChange, Leader) cuts
// blocks and proposes each with ProposeWait; every node appends the blocks
// of Apply's entries to its block store, records each block's raft index
// (Fabric's etcdraft keeps it in the block's consenter metadata), and
// passes the last one as Config.Applied on the next start; SnapshotData returns the height and
// last block hash, and a Commit.Snapshot tells a lagging node which blocks
// to fetch from peers.
package raftlog

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/internal/diag"
)

// Proposal envelope inside each normal raft entry (stripped before Apply):
// version(1)=1, proposer ID(8), proposer sequence(8), then the data. It lets
// ProposeWait recognise its own entry when it commits.
const (
	propVersion   = 1
	propHeaderLen = 17
)

// Node is one consenter. Its methods are safe for concurrent use.
type Node struct {
	cfg     Config
	wal     *wal
	storage *raft.MemoryStorage
	rec     *recovered
	tr      *transport

	rn raft.Node
	// core: what the Ready handling asks of raft (rn, or the RawNode of a
	// Stepper); out: where its messages go (the transport, or the
	// Stepper's send). Set before the first Ready.
	core    raftCore
	out     func([]raftpb.Message)
	started chan struct{} // closed once rn is set
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when Run returns

	mu        sync.Mutex
	running   bool
	closed    bool
	cancel    context.CancelFunc
	closeErr  error
	closeOnce sync.Once
	confState raftpb.ConfState
	members   map[uint64]Peer // from the log (membership.go), else Config.Peers
	// memberVersion: the highest version of an applied conf change
	// (MembershipVersion, membership.go).
	memberVersion uint64

	removed   atomic.Bool // this node's ID left the configuration
	retired   atomic.Bool // Retire: the application says this node no longer belongs
	bootstrap atomic.Bool // started a new cluster from Config.Peers

	lead, term, commit, applied, snapIndex atomic.Uint64
	leaderLostAt                           atomic.Int64 // UnixNano; see LeaderLostAt
	state                                  atomic.Int32

	forceSnap bool // Run goroutine only: snapshot after this Ready (membership grew)
	// Run goroutine only: applying a snapshot (Apply's catch-up, which may
	// fetch from peers for long) runs in its own goroutine so that the raft
	// loop keeps ticking, voting and persisting meanwhile (apply.go).
	snapRun      chan error // non-nil while a snapshot is being applied
	inlineSnap   bool       // Stepper: apply a snapshot on the calling goroutine
	snapRelease  uint64     // WAL to release once snapRun succeeds (0: none)
	pending      []applyJob // what comes after it, applied in order once it is done
	pendingBytes uint64
	// sinceSnap (Run goroutine only) and logBytes: memlog.go.
	sinceSnap uint64
	logBytes  atomic.Uint64

	// propc feeds the batcher: proposals from many callers go to raft as one
	// MsgProp, so the leader appends and replicates them as one batch.
	propc chan []byte

	collector *collector

	seq   atomic.Uint64
	wmu   sync.Mutex
	waits map[uint64]*waiter
}

type waiter struct {
	data []byte
	ch   chan uint64 // receives the entry's index
	err  error       // a conf change: why it was refused (set before ch receives)
}

// New validates cfg, opens (or creates) the log in cfg.Dir and replays it.
// It starts nothing; call Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := cfg.withDefaults()
	maxBody := c.MaxEntryBytes + 4096 // entry metadata and our envelope
	w, rec, err := openWAL(c.Dir, c.ID, c.Cluster, c.SegmentBytes, maxBody, c.Logger)
	if err != nil {
		return nil, err
	}
	st := raft.NewMemoryStorage()
	if !raft.IsEmptySnap(rec.snap) {
		if err := st.ApplySnapshot(rec.snap); err != nil {
			w.close()
			return nil, err
		}
	}
	if err := st.SetHardState(rec.hs); err != nil {
		w.close()
		return nil, err
	}
	n := &Node{
		cfg: c, wal: w, storage: st, rec: rec,
		started: make(chan struct{}), closing: make(chan struct{}), done: make(chan struct{}),
		members: map[uint64]Peer{}, waits: map[uint64]*waiter{}, propc: make(chan []byte, 1024),
		confState: rec.snap.Metadata.ConfState,
	}
	if err := n.appendLog(rec.ents); err != nil {
		w.close()
		return nil, err
	}
	replayed := len(rec.ents)
	rec.ents = nil // storage has them
	for _, p := range c.Peers {
		n.members[p.ID] = p
	}
	m, _, err := decodeSnapData(rec.snap.Data)
	if err != nil {
		w.close()
		return nil, fmt.Errorf("%w: snapshot %d in %s: %v", ErrCorrupt, rec.snap.Metadata.Index, c.Dir, err)
	}
	for _, p := range m.members {
		n.learn(p)
	}
	n.memberVersion = m.version
	n.setRemoved()
	var b [8]byte
	rand.Read(b[:]) // a fresh sequence space per start: entries proposed before a restart never match new waiters
	n.seq.Store(binary.BigEndian.Uint64(b[:]) >> 1)
	n.snapIndex.Store(rec.snap.Metadata.Index)
	n.term.Store(rec.hs.Term)
	n.commit.Store(rec.hs.Commit)
	n.tr = &transport{
		id: c.ID, cluster: c.Cluster, dialer: c.Dialer, ln: c.Listener,
		clientTLS: c.ClientTLS, serverTLS: c.ServerTLS, queueLen: c.SendQueue,
		maxFrame: maxBody + int(c.MaxSizePerMsg) + 1<<16, dialTO: c.DialTimeout, writeTO: c.WriteTimeout,
		stallAfter: time.Duration(c.ElectionTicks) * c.TickInterval,
		log:        c.Logger, report: n,
		acceptUnknown: n.acceptsUnknown,
		idle:          n.idle,
		selfAddr:      n.selfAddr,
		step:          func(ctx context.Context, m raftpb.Message) error { return n.rn.Step(ctx, m) },
		compress:      !diag.NoRaftCompression,
	}
	if c.Registerer != nil {
		n.collector = newCollector(n)
		if err := c.Registerer.Register(n.collector); err != nil {
			w.close()
			return nil, fmt.Errorf("raft metrics for node %d of %q: %w", c.ID, c.Cluster, err)
		}
	}
	c.Logger.Info("raft log opened", "node", c.ID, "cluster", c.Cluster, "dir", c.Dir,
		"snapshot_index", rec.snap.Metadata.Index, "entries", replayed, "commit", rec.hs.Commit, "term", rec.hs.Term)
	return n, nil
}

// Run runs the node until ctx ends, Close is called, or a fatal error
// (storage failure, Apply error, listener failure), which it returns. It
// may be called once.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	if n.running {
		n.mu.Unlock()
		return errors.New("raftlog: Run called twice")
	}
	n.running = true
	ctx, n.cancel = context.WithCancel(ctx)
	n.mu.Unlock()
	defer close(n.done)

	rc, boot, bpeers := n.raftConfig()
	if boot {
		n.rn = raft.StartNode(rc, bpeers)
	} else {
		n.rn = raft.RestartNode(rc)
	}
	n.core, n.out = n.rn, n.tr.send
	c := n.cfg
	applied := rc.Applied
	n.applied.Store(applied)
	close(n.started)

	var peers []Peer
	n.mu.Lock()
	for _, p := range n.members {
		if p.Addr != "" {
			peers = append(peers, p)
		}
	}
	n.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	n.tr.start(gctx, g, peers) // before the loop, which may add peers
	g.Go(func() error { return n.loop(gctx) })
	g.Go(func() error { return n.batch(gctx) })
	err := g.Wait()
	n.rn.Stop()
	n.failWaiters()
	if err != nil {
		n.cfg.Logger.Error("raft node stopped", "node", c.ID, "err", err)
	}
	return err
}

// raftConfig returns the raft configuration of this start, and the
// bootstrap peers when this start creates the cluster (boot).
func (n *Node) raftConfig() (rc *raft.Config, boot bool, peers []raft.Peer) {
	c := n.cfg
	// raft re-delivers every committed entry after the snapshot: membership
	// changes among them must reach raft again (ApplyConfChange) even when
	// the application already has them; apply skips normal entries at or
	// below Config.Applied.
	applied := n.rec.snap.Metadata.Index
	rc = &raft.Config{
		ID: c.ID, ElectionTick: c.ElectionTicks, HeartbeatTick: c.HeartbeatTicks,
		Storage: n.storage, Applied: applied,
		MaxSizePerMsg: c.MaxSizePerMsg, MaxInflightMsgs: c.MaxInflightMsgs, MaxInflightBytes: c.MaxInflightBytes,
		MaxUncommittedEntriesSize: 1 << 30,
		CheckQuorum:               true, PreVote: true,
		StepDownOnRemoval: true,
		Logger:            raftLogger{n.cfg.Logger.With("node", c.ID)},
	}
	if !n.rec.fresh || c.Join {
		return rc, false, nil
	}
	for _, p := range c.Peers {
		peers = append(peers, raft.Peer{ID: p.ID, Context: confContext(0, 0, p, 0)})
	}
	n.bootstrap.Store(true)
	return rc, true, peers
}

// raftCore is what the Ready handling needs of raft: raft.Node and
// raft.RawNode both have it.
type raftCore interface {
	ApplyConfChange(cc raftpb.ConfChangeI) *raftpb.ConfState
}

// Close stops Run (waiting for it), closes the listener and the log. It is
// idempotent and returns the first result on every call.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		cancel, running := n.cancel, n.running
		n.mu.Unlock()
		close(n.closing)
		if running {
			cancel()
			<-n.done
		} else {
			n.cfg.Listener.Close()
		}
		if n.collector != nil {
			n.cfg.Registerer.Unregister(n.collector)
		}
		n.closeErr = n.wal.close()
	})
	return n.closeErr
}

func (n *Node) loop(ctx context.Context) error {
	defer n.waitSnapshotApplied()
	if err := n.applyLocalSnapshot(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(n.cfg.TickInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-n.snapRun:
			if err := n.snapshotApplied(ctx, err); err != nil {
				return err
			}
		case <-tick.C:
			if n.retired.Load() && n.lead.Load() == 0 {
				continue // Retire: no election timer, so no campaign
			}
			n.rn.Tick()
		case rd := <-n.rn.Ready():
			if err := n.handleReady(ctx, rd); err != nil {
				return err
			}
			n.rn.Advance()
		}
	}
}

// applyLocalSnapshot starts the application's catch-up to the local
// snapshot when it is behind it (every entry after it waits), while the
// node takes part in elections.
func (n *Node) applyLocalSnapshot(ctx context.Context) error {
	if s := n.rec.snap; !raft.IsEmptySnap(s) && n.cfg.Applied < s.Metadata.Index {
		n.pending = append(n.pending, applyJob{snap: &s})
		return n.applyPending(ctx)
	}
	return nil
}

// handleReady handles one Ready: persist, send, apply. Run's loop and a
// Stepper call it; the caller then calls Advance.
func (n *Node) handleReady(ctx context.Context, rd raft.Ready) error {
	leaderChanged := false
	if rd.SoftState != nil {
		leaderChanged = n.lead.Swap(rd.SoftState.Lead) != rd.SoftState.Lead
		if leaderChanged && rd.SoftState.Lead == raft.None {
			// At the swap, before this Ready's fsync: OnLeaderChange comes
			// only after it, and Leader already says 0 meanwhile.
			n.leaderLostAt.Store(time.Now().UnixNano())
		}
		n.state.Store(int32(rd.SoftState.RaftState))
	}
	hasSnap := !raft.IsEmptySnap(rd.Snapshot)
	// 0. A leader may replicate in parallel with its own fsync (Raft thesis
	// 10.2.1, as etcd does): raft counts the leader's own copy towards the
	// commit quorum only after Advance, i.e. after the fsync below, so an
	// entry still commits only once a majority has it durably. Messages whose
	// meaning depends on this node's durable state (votes, append responses)
	// always wait for the fsync.
	msgs := rd.Messages
	if raft.StateType(n.state.Load()) == raft.StateLeader {
		early := msgs[:0:0]
		late := msgs[:0:0]
		for _, m := range msgs {
			switch m.Type {
			case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap:
				early = append(early, m)
			default:
				late = append(late, m)
			}
		}
		n.out(early)
		msgs = late
	}
	// 1. Durable first: snapshot file, the record that it replaced the log
	// (wal.go), then entries and HardState.
	if hasSnap {
		if err := n.wal.saveSnapshot(rd.Snapshot); err != nil {
			return err
		}
		if err := n.wal.markInstalled(rd.Snapshot.Metadata.Index, rd.Snapshot.Metadata.Term); err != nil {
			return err
		}
	}
	if err := n.wal.save(rd.HardState, rd.Entries, rd.MustSync); err != nil {
		return err
	}
	// 2. The in-memory view raft reads.
	if hasSnap {
		if err := n.applySnapshotLog(rd.Snapshot); err != nil {
			return err
		}
		// Before answering: a joining node learns its peers' addresses here.
		if err := n.installSnapMembers(rd.Snapshot); err != nil {
			return err
		}
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := n.storage.SetHardState(rd.HardState); err != nil {
			return err
		}
		n.term.Store(rd.HardState.Term)
		n.commit.Store(rd.HardState.Commit)
	}
	if err := n.appendLog(rd.Entries); err != nil {
		return err
	}
	// 3. Only now may other nodes learn about it.
	n.out(msgs)
	if leaderChanged {
		lead := n.lead.Load()
		n.cfg.Logger.Info("raft leader changed", "node", n.cfg.ID, "leader", lead, "term", n.term.Load())
		if n.cfg.OnLeaderChange != nil {
			n.cfg.OnLeaderChange(lead, n.term.Load())
		}
	}
	// 4. Apply (apply.go): in order, a snapshot in the background.
	if hasSnap {
		s := rd.Snapshot
		n.pending = append(n.pending, applyJob{snap: &s, release: true})
	}
	if len(rd.CommittedEntries) > 0 {
		n.pending = append(n.pending, applyJob{ents: rd.CommittedEntries})
		for _, e := range rd.CommittedEntries {
			n.pendingBytes += uint64(len(e.Data))
		}
	}
	if err := n.applyPending(ctx); err != nil {
		return err
	}
	if n.snapRun != nil && (hasConfChange(rd.CommittedEntries) || n.pendingBytes > n.maxPendingBytes()) {
		// raft takes what it handed out as applied once Advance is called:
		// a membership change must really be (raft campaigns with it, as
		// etcd's server waits for it); and entries queued behind a long
		// catch-up must not grow without bound.
		t, queued := time.Now(), n.pendingBytes
		if err := n.finishSnapshot(ctx); err != nil {
			return err
		}
		n.cfg.Logger.Info("raft loop waited for the snapshot's catch-up", "node", n.cfg.ID,
			"queued_bytes", queued, "conf_change", hasConfChange(rd.CommittedEntries), "waited_ms", time.Since(t).Milliseconds())
	}
	return nil
}

func (n *Node) deliverSnapshot(ctx context.Context, s raftpb.Snapshot) error {
	n.cfg.Logger.Info("raft snapshot installed", "node", n.cfg.ID, "index", s.Metadata.Index, "term", s.Metadata.Term)
	_, app, err := decodeSnapData(s.Data)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrCorrupt, s.Metadata.Index, err)
	}
	err = n.cfg.Apply(ctx, Commit{Snapshot: &Snapshot{Index: s.Metadata.Index, Term: s.Metadata.Term, Data: app}})
	if err != nil {
		return fmt.Errorf("apply snapshot %d: %w", s.Metadata.Index, err)
	}
	n.applied.Store(max(n.applied.Load(), s.Metadata.Index))
	n.snapIndex.Store(max(n.snapIndex.Load(), s.Metadata.Index))
	return nil
}

type wake struct {
	seq   uint64
	index uint64
	data  []byte
}

func (n *Node) apply(ctx context.Context, ents []raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	var out []Entry
	var wakes []wake
	flush := func() error {
		if len(out) > 0 {
			if err := n.cfg.Apply(ctx, Commit{Entries: out}); err != nil {
				return fmt.Errorf("apply entries %d..%d: %w", out[0].Index, out[len(out)-1].Index, err)
			}
			out = nil
		}
		return nil
	}
	applied := n.applied.Load()
	for i := range ents {
		e := &ents[i]
		if e.Index <= applied {
			continue
		}
		n.sinceSnap += uint64(len(e.Data))
		switch e.Type {
		case raftpb.EntryNormal:
			if len(e.Data) == 0 || e.Index <= n.cfg.Applied {
				break // a new leader's empty entry, or one the application has
			}
			proposer, seq, data, err := parseProposal(e.Data)
			if err != nil {
				return fmt.Errorf("%w: entry %d: %v", ErrCorrupt, e.Index, err)
			}
			out = append(out, Entry{Index: e.Index, Term: e.Term, Data: data})
			if proposer == n.cfg.ID {
				wakes = append(wakes, wake{seq, e.Index, data})
			}
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			if err := flush(); err != nil {
				return err
			}
			if err := n.applyConfChange(e); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	n.applied.Store(max(applied, ents[len(ents)-1].Index))
	if len(wakes) > 0 {
		n.wmu.Lock()
		for _, w := range wakes {
			if wt := n.waits[w.seq]; wt != nil && bytes.Equal(wt.data, w.data) {
				wt.ch <- w.index
				delete(n.waits, w.seq)
			}
		}
		n.wmu.Unlock()
	}
	return nil
}

func (n *Node) maybeSnapshot() error {
	applied := n.applied.Load()
	if applied <= n.snapIndex.Load() || applied < n.cfg.Applied || (!n.snapshotDue(applied) && !n.forceSnap) {
		return nil
	}
	n.forceSnap, n.sinceSnap = false, 0
	var data []byte
	if n.cfg.SnapshotData != nil {
		var err error
		if data, err = n.cfg.SnapshotData(applied); err != nil {
			return fmt.Errorf("snapshot data at %d: %w", applied, err)
		}
	}
	n.mu.Lock()
	cs := n.confState
	data = encodeSnapData(snapMembership{members: n.snapMembers(cs), version: n.memberVersion}, data)
	n.mu.Unlock()
	snap, err := n.storage.CreateSnapshot(applied, &cs, data)
	if err != nil {
		return fmt.Errorf("create snapshot at %d: %w", applied, err)
	}
	if err := n.wal.saveSnapshot(snap); err != nil {
		return err
	}
	if err := n.compactLog(applied); err != nil {
		return err
	}
	n.snapIndex.Store(applied)
	n.cfg.Logger.Debug("raft snapshot made", "node", n.cfg.ID, "index", applied, "log_bytes", n.logBytes.Load())
	return n.wal.release(applied)
}

func (n *Node) isStarted() bool {
	select {
	case <-n.started:
		return true
	default:
		return false
	}
}

func (n *Node) waitStarted(ctx context.Context) error {
	select {
	case <-n.started:
		return nil
	case <-n.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func mapRaftErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrProposalDropped):
		return fmt.Errorf("%w: %v", ErrDropped, err)
	case errors.Is(err, raft.ErrStopped):
		return ErrClosed
	}
	return err
}

// Propose queues data for raft (batched with concurrent proposals; the
// leader appends it, a follower forwards it to the leader) and returns once
// queued. The queue is bounded: Propose blocks while it is full, e.g. while
// no leader is known. A nil error does NOT mean the entry will commit (the
// leader may fail first, or drop it during a leadership transfer); use
// ProposeWait for that. Errors: ErrTooLarge, ErrClosed, ctx's.
func (n *Node) Propose(ctx context.Context, data []byte) error {
	_, err := n.propose(ctx, data, false)
	return err
}

// ProposeWait proposes data and returns the entry's index once it is
// committed and Config.Apply has returned for it on this node: the entry is
// then durable on a quorum and will never be lost. If the entry is lost
// (leader failure before commit) ProposeWait returns ctx's error; the
// caller may propose again, so the same data may then commit twice:
// applications deduplicate (the ledger by transaction ID).
func (n *Node) ProposeWait(ctx context.Context, data []byte) (uint64, error) {
	return n.propose(ctx, data, true)
}

func (n *Node) propose(ctx context.Context, data []byte, wait bool) (uint64, error) {
	if len(data) > n.cfg.MaxEntryBytes {
		return 0, fmt.Errorf("%w: proposal of %d bytes, limit %d (MaxEntryBytes)", ErrTooLarge, len(data), n.cfg.MaxEntryBytes)
	}
	if err := n.waitStarted(ctx); err != nil {
		return 0, err
	}
	select {
	case <-n.done:
		return 0, ErrClosed // Run has returned: nothing would take the proposal
	default:
	}
	seq, buf := n.envelope(data)
	var w *waiter
	if wait {
		w = &waiter{data: buf[propHeaderLen:], ch: make(chan uint64, 1)}
		n.wmu.Lock()
		n.waits[seq] = w
		n.wmu.Unlock()
		defer func() {
			n.wmu.Lock()
			delete(n.waits, seq)
			n.wmu.Unlock()
		}()
	}
	select {
	case n.propc <- buf:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrClosed
	}
	if !wait {
		return 0, nil
	}
	select {
	case idx := <-w.ch:
		return idx, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrClosed
	}
}

// envelope wraps data in a proposal envelope with the next sequence.
func (n *Node) envelope(data []byte) (seq uint64, buf []byte) {
	seq = n.seq.Add(1)
	buf = make([]byte, propHeaderLen, propHeaderLen+len(data))
	buf[0] = propVersion
	binary.BigEndian.PutUint64(buf[1:9], n.cfg.ID)
	binary.BigEndian.PutUint64(buf[9:17], seq)
	return seq, append(buf, data...)
}

// maxBatch bounds the entries of one batched proposal.
const maxBatch = 512

// batch hands queued proposals to raft, as many as are waiting (up to
// maxBatch entries or MaxSizePerMsg bytes) in one MsgProp. raft.Node.Step
// blocks while no leader is known; proposals queue meanwhile.
func (n *Node) batch(ctx context.Context) error {
	for {
		var first []byte
		select {
		case <-ctx.Done():
			return nil
		case first = <-n.propc:
		}
		ents := []raftpb.Entry{{Data: first}}
		size := uint64(len(first))
	fill:
		for len(ents) < maxBatch && size < n.cfg.MaxSizePerMsg {
			select {
			case b := <-n.propc:
				ents = append(ents, raftpb.Entry{Data: b})
				size += uint64(len(b))
			default:
				break fill
			}
		}
		// A new slice every time: raft sets Term and Index in place.
		if err := n.rn.Step(ctx, raftpb.Message{Type: raftpb.MsgProp, Entries: ents}); err != nil {
			if ctx.Err() != nil || errors.Is(err, raft.ErrStopped) {
				return nil
			}
			n.cfg.Logger.Warn("raft proposal batch dropped", "node", n.cfg.ID, "entries", len(ents), "err", err)
		}
	}
}

func (n *Node) failWaiters() {
	n.wmu.Lock()
	clear(n.waits)
	n.wmu.Unlock()
}

func parseProposal(b []byte) (proposer, seq uint64, data []byte, err error) {
	if len(b) < propHeaderLen || b[0] != propVersion {
		return 0, 0, nil, fmt.Errorf("malformed proposal envelope (%d bytes)", len(b))
	}
	return binary.BigEndian.Uint64(b[1:9]), binary.BigEndian.Uint64(b[9:17]), b[propHeaderLen:], nil
}

// reportUnreachable and reportSnapshot implement reporter for the transport.
func (n *Node) reportUnreachable(id uint64) {
	if n.isStarted() {
		n.rn.ReportUnreachable(id)
	}
}

func (n *Node) reportSnapshot(id uint64, s raft.SnapshotStatus) {
	if n.isStarted() {
		n.rn.ReportSnapshot(id, s)
	}
}

var _ reporter = (*Node)(nil)

// Leader returns the ID of the leader this node knows, 0 if none.
func (n *Node) Leader() uint64 { return n.lead.Load() }

// LeaderLostAt is when Leader last went from a leader to none (the zero
// time if it never did).
func (n *Node) LeaderLostAt() time.Time {
	if ns := n.leaderLostAt.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// ID returns this node's raft ID.
func (n *Node) ID() uint64 { return n.cfg.ID }

// ElectionTimeout is ElectionTicks × TickInterval: a follower that hears
// nothing from its leader for between one and two of these campaigns.
func (n *Node) ElectionTimeout() time.Duration {
	return time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval
}

// Status is a point-in-time view for `memberd status` and metrics.
type Status struct {
	ID, Leader, Term uint64
	State            string // "StateLeader", "StateFollower", ...
	Commit, Applied  uint64
	SnapshotIndex    uint64
	// LogBytes: bytes of entry data raft holds in memory (the entries not
	// yet compacted away by a snapshot; memlog.go).
	LogBytes         uint64
	Voters, Learners []uint64
	// Members: the voters with the name and address the log recorded.
	Members []Peer
	// Removed: this node's ID was removed from the configuration; it no
	// longer takes part in consensus.
	Removed bool
	// Retired: the application retired this node (Retire).
	Retired bool
	// MembershipVersion: the highest version of an applied conf change.
	MembershipVersion uint64
	Transport         TransportStats
}

// Status returns the node's current status.
func (n *Node) Status() Status {
	n.mu.Lock()
	cs := n.confState
	members := n.snapMembers(raftpb.ConfState{Voters: cs.Voters})
	mv := n.memberVersion
	n.mu.Unlock()
	return Status{
		ID: n.cfg.ID, Leader: n.lead.Load(), Term: n.term.Load(),
		State:  raft.StateType(n.state.Load()).String(),
		Commit: n.commit.Load(), Applied: n.applied.Load(), SnapshotIndex: n.snapIndex.Load(), LogBytes: n.logBytes.Load(),
		Voters: append([]uint64(nil), cs.Voters...), Learners: append([]uint64(nil), cs.Learners...),
		Members: members, Removed: n.removed.Load(), Retired: n.retired.Load(),
		MembershipVersion: mv, Transport: n.tr.stats(),
	}
}

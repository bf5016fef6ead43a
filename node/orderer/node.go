package orderer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer/etcdraft"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/blockstore"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

// Node orders one channel. Its methods are safe for concurrent use.
//
// Lifecycle: New opens the block store and the raft log and starts nothing;
// Run runs raft and the ordering driver until ctx ends or Close; Close is
// idempotent.
type Node struct {
	cfg     Config
	channel string
	log     *slog.Logger
	raft    *raftlog.Node
	store   *blockstore.Store
	adm     *admitter

	submitCh chan submission
	leaderCh chan struct{}
	// applied wakes the driver when blocks are stored (adaptive cutting).
	applied chan struct{}
	// leaderGen is cancelled and replaced at every leader change, so that
	// forwarded submissions can stop waiting for a deposed leader.
	leaderGen atomic.Pointer[leaderEpoch]
	// leaderLost: when this node last knew no leader (New, Run's start,
	// or a leader change to none), unix nanoseconds. A
	// submission that finds no leader waits for one until leaderWait
	// after it (knownLeader).
	leaderLost atomic.Int64
	closed     chan struct{}
	once       sync.Once
	running    atomic.Bool
	stopped    atomic.Bool // Run has returned: submissions are refused at once

	mu      sync.Mutex
	waiters map[txKey]*waiter
	recent  *recentSet
	// proposed: the tx ids of blocks this leader proposed, so that its
	// apply need not parse every envelope again (guarded by mu).
	proposed map[uint64]proposedBlock
	// ordering: the tx ids this leader has taken into its cutter or
	// proposed and not yet stored (guarded by mu). A resubmission of one
	// is a duplicate even once its first waiter gave up (the client's
	// context or SubmitTimeout): the envelope is still on its way.
	ordering map[txKey]struct{}

	ordered atomic.Uint64 // envelopes committed (metrics, tests)

	reconcileOnce sync.Once
	reconcileC    chan struct{}          // membership.go
	self          atomic.Pointer[string] // selfName, once known
	// signing is the identity that signs the blocks this node writes:
	// Config.Signer/Identity until SetIdentity swaps it.
	signing atomic.Pointer[signingIdentity]
	// inForce is the channel config in force (that of the last config
	// block), against which signing identities are checked and which sets
	// the cutter. apply replaces it when it stores a config block.
	inForce atomic.Pointer[configInForce]
	// signOK: whether the signing identity may sign under the config in
	// force (maySign; apply's goroutine only).
	signOK signCheck
	// copies: the stream of other consenters' copies while this node may
	// not sign (copyOf; apply's goroutine only, then Run's end).
	copies *copyStream
	// cfgtx is the policy versions seen, for CONFIG blocks (configtx.go).
	cfgtx configState
	// genesisConsenters are the consenters of the genesis block. Immutable.
	genesisConsenters []channelconfig.Consenter
}

// configInForce is a channel config in force. Immutable.
type configInForce struct {
	ch     *channelconfig.Channel
	cut    block.CutterConfig
	number uint64 // of its config block
}

// signingIdentity is a block signer and its msp.SerializedIdentity.
type signingIdentity struct {
	signer   crypto.Signer
	identity []byte
}

type submission struct {
	raw []byte
	key txKey
	w   *waiter // the waiter registered for it: stale once no longer n.waiters[key]
}

type proposedBlock struct {
	dataHash []byte
	keys     []txKey
	entry    []byte        // the raft entry proposed
	blk      *common.Block // the block it encodes (saves decoding it in apply)
}

type waiter struct {
	done chan struct{}
	err  error
}

// New validates cfg, opens the block store (writing the genesis block to an
// empty store) and the raft log. It starts nothing.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	st := startTimer{start: time.Now()}
	store, err := blockstore.Open(cfg.BlockDir, blockstore.Config{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	st.store = time.Since(st.start)
	n, err := newNode(cfg, store, &st)
	if err != nil {
		store.Close()
		return nil, err
	}
	return n, nil
}

func newNode(cfg Config, store *blockstore.Store, st *startTimer) (*Node, error) {
	if store.Height() == 0 {
		if cfg.Genesis == nil {
			return nil, fmt.Errorf("%w: block store %s is empty and no Genesis block was given", ErrInvalidConfig, cfg.BlockDir)
		}
		if err := store.Append(cfg.Genesis); err != nil {
			return nil, fmt.Errorf("writing genesis block to %s: %w", cfg.BlockDir, err)
		}
	}
	gen, err := store.Get(0)
	if err != nil {
		return nil, err
	}
	if cfg.Genesis != nil && !bytes.Equal(block.HeaderHash(gen.Header), block.HeaderHash(cfg.Genesis.Header)) {
		return nil, fmt.Errorf("%w: block store %s holds another channel's genesis block", ErrInvalidConfig, cfg.BlockDir)
	}
	ch, err := channelconfig.Parse(gen)
	if err != nil {
		return nil, fmt.Errorf("genesis block in %s: %w", cfg.BlockDir, err)
	}
	last, err := store.Get(store.Height() - 1)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg: cfg, channel: ch.Config.ChannelID,
		log:      cfg.Logger.With("channel", ch.Config.ChannelID),
		store:    store,
		submitCh: make(chan submission, cfg.SubmitQueue),
		proposed: make(map[uint64]proposedBlock),
		ordering: make(map[txKey]struct{}),
		leaderCh: make(chan struct{}, 1),
		applied:  make(chan struct{}, 1),
		closed:   make(chan struct{}),
		waiters:  make(map[txKey]*waiter),
		recent:   newRecentSet(cfg.RecentTxIDs),
		cfgtx:    newConfigState(),

		genesisConsenters: ch.Config.Consenters,
	}
	var lastConfig uint64
	if lc, err := block.LastConfigIndex(last); err == nil {
		lastConfig = lc
	}
	inForce, err := n.channelConfig(ch, lastConfig)
	if err != nil {
		return nil, err
	}
	n.inForce.Store(inForce)
	if err := n.checkSigner(cfg.Signer, cfg.Identity); err != nil {
		return nil, err
	}
	n.signing.Store(&signingIdentity{signer: cfg.Signer, identity: cfg.Identity})
	n.observePolicy()
	n.leaderGen.Store(newLeaderEpoch())
	n.leaderLost.Store(time.Now().UnixNano()) // no leader known yet; Run sets it again
	n.adm = newAdmitter(n.channel, inForce.cut.AbsoluteMaxBytes, cfg.Policy, cfg.Now)
	t := time.Now()
	if err := n.loadRecent(); err != nil {
		return nil, err
	}
	st.recent = time.Since(t)

	rc := cfg.Raft
	if rc.Cluster == "" {
		rc.Cluster = n.channel
	}
	rc.Applied = raftIndex(last)
	rc.Apply = n.apply
	rc.SnapshotData = n.snapshotData
	rc.OnLeaderChange = n.onLeaderChange
	if rc.Logger == nil {
		rc.Logger = cfg.Logger
	}
	t = time.Now()
	if n.raft, err = raftlog.New(rc); err != nil {
		return nil, err
	}
	st.raft = time.Since(t)
	st.log(n.log, store.Height())
	return n, nil
}

// startTimer is where opening a node spent its time, for the start-up line.
type startTimer struct {
	start               time.Time
	store, recent, raft time.Duration
}

// slowStart is the opening time above which the node logs where the time
// went at INFO (an operator waiting on a restart sees why); below it DEBUG.
const slowStart = time.Second

func (st *startTimer) log(log *slog.Logger, height uint64) {
	total := time.Since(st.start)
	level := slog.LevelDebug
	if total > slowStart {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "ordering node opened", "height", height, "seconds", total.Seconds(),
		"block_store_seconds", st.store.Seconds(), "recent_tx_ids_seconds", st.recent.Seconds(), "raft_log_seconds", st.raft.Seconds())
}

func (n *Node) checkSigner(signer crypto.Signer, identity []byte) error {
	if n.cfg.skipSignerCheck {
		return nil
	}
	err := CheckSigner(n.ChannelConfig(), signer, identity, n.cfg.Now())
	if errors.Is(err, ErrSignerOrgMissing) {
		if n.cfg.Fetcher != nil {
			// maySign: it stores other consenters' copies meanwhile.
			n.log.Info("this node's org is no orderer org of the channel config in force: it stores the blocks other consenters signed until a CONFIG block adds it", "err", err)
			return nil
		}
		n.log.Warn("signing blocks that stock Fabric peers will refuse", "err", err)
		return nil
	}
	return err
}

// channelConfig returns the channel config in force: the genesis config
// gen, or that of config block lastConfig when it is a later one.
// Config.Batch, when set, overrides the genesis config's batch parameters
// (not those of a later config block).
func (n *Node) channelConfig(gen *channelconfig.Channel, lastConfig uint64) (*configInForce, error) {
	if lastConfig == 0 {
		cut := gen.Config.Batch
		if n.cfg.Batch != (block.CutterConfig{}) {
			cut = n.cfg.Batch
		}
		if _, err := block.NewCutter(cut); err != nil {
			return nil, err
		}
		return &configInForce{ch: gen, cut: cut}, nil
	}
	b, err := n.store.Get(lastConfig)
	if err != nil {
		return nil, fmt.Errorf("last config block %d: %w", lastConfig, err)
	}
	return configOfBlock(b)
}

// configOfBlock returns the config that config block b puts in force.
func configOfBlock(b *common.Block) (*configInForce, error) {
	num := b.GetHeader().GetNumber()
	ch, err := channelconfig.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config block %d: %w", num, err)
	}
	if _, err := block.NewCutter(ch.Config.Batch); err != nil {
		return nil, fmt.Errorf("config block %d: %w", num, err)
	}
	return &configInForce{ch: ch, cut: ch.Config.Batch, number: num}, nil
}

// loadRecent fills the duplicate set from the newest blocks of the store.
// It reads the store first and takes n.mu only to add: after a snapshot it
// runs while Broadcast streams check the set (order, under n.mu).
//
// A block it cannot read (damaged in the middle of the chain, where the
// store's Open does not look) is an error: skipping it, or stopping at it,
// would leave its ids and the older ones out of the set, and an envelope
// already in the chain would be ordered a second time.
func (n *Node) loadRecent() error {
	h := n.store.Height()
	var keys []txKey
	for i := h; i > 1 && len(keys) < n.cfg.RecentTxIDs; i-- {
		raw, err := n.store.GetRaw(i - 1)
		if err == nil {
			err = block.TxIDs(raw, func(id string) { keys = append(keys, keyOf(id)) })
			if err != nil && !errors.Is(err, blockstore.ErrCorrupt) {
				err = fmt.Errorf("%w: %v; restore the store from a peer or backup", blockstore.ErrCorrupt, err)
			}
		}
		if err != nil {
			return fmt.Errorf("reading the tx ids of block %d for the duplicate check: %w "+
				"(memberd ledger verify %s, with the member stopped, checks the whole chain)",
				i-1, err, n.cfg.BlockDir)
		}
	}
	n.mu.Lock()
	for _, k := range keys {
		n.recent.add(k)
		delete(n.ordering, k)
	}
	n.mu.Unlock()
	return nil
}

// raftIndex returns the raft index recorded in b's consenter metadata (0 for
// a block not written by raft, such as the genesis block).
func raftIndex(b *common.Block) uint64 {
	md, err := block.ConsenterMetadata(b)
	if err != nil || len(md) == 0 {
		return 0
	}
	var m etcdraft.BlockMetadata
	if proto.Unmarshal(md, &m) != nil {
		return 0
	}
	return m.RaftIndex
}

// SetIdentity makes signer, with identity (the marshalled
// msp.SerializedIdentity of its certificate), sign the blocks this node
// writes from the next committed block on: an HSM identity rotation needs
// no restart. Blocks already written keep their signatures.
//
// An identity that the channel config rejects (see CheckSigner) is refused
// with an error wrapping ErrSigner, and the node keeps signing with the
// identity it has.
func (n *Node) SetIdentity(signer crypto.Signer, identity []byte) error {
	if signer == nil || len(identity) == 0 {
		return fmt.Errorf("%w: SetIdentity needs a signer and its serialized identity", ErrInvalidConfig)
	}
	if err := n.checkSigner(signer, identity); err != nil {
		return err
	}
	n.signing.Store(&signingIdentity{signer: signer, identity: identity})
	return nil
}

// ChannelConfig returns the channel config in force (the last config
// block's), against which signing identities are checked.
func (n *Node) ChannelConfig() *channelconfig.Channel { return n.inForce.Load().ch }

// LastConfig returns the number of the last config block (0: genesis).
func (n *Node) LastConfig() uint64 { return n.inForce.Load().number }

// BatchConfig returns the batch parameters in force.
func (n *Node) BatchConfig() block.CutterConfig { return n.inForce.Load().cut }

// ChannelID returns the channel this node orders.
func (n *Node) ChannelID() string { return n.channel }

// Store returns the node's block store (read it; never append).
func (n *Node) Store() *blockstore.Store { return n.store }

// Raft returns the replicated log (for status and membership changes).
func (n *Node) Raft() *raftlog.Node { return n.raft }

// Height returns the number of blocks in the local store.
func (n *Node) Height() uint64 { return n.store.Height() }

// IsLeader reports whether this node is the raft leader.
func (n *Node) IsLeader() bool { return n.raft.Leader() == n.raft.ID() }

// Policy returns the current policy.
func (n *Node) Policy() *policy.Policy { return n.cfg.Policy() }

// Healthy reports whether the node is connected to consensus: it runs and
// knows a leader. Deliver answers SERVICE_UNAVAILABLE when it is not (unless
// the client asked for BEST_EFFORT).
func (n *Node) Healthy() error {
	select {
	case <-n.closed:
		return ErrClosed
	default:
	}
	if !n.running.Load() {
		return fmt.Errorf("%w: node not running", ErrUnavailable)
	}
	if err := n.membershipErr(); err != nil {
		return err
	}
	if n.raft.Leader() == 0 {
		return fmt.Errorf("%w: no raft leader known", ErrUnavailable)
	}
	return nil
}

// Run runs raft and the ordering driver until ctx ends, Close is called or
// a fatal error (returned). It may be called once.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-n.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	n.running.Store(true)
	defer n.running.Store(false)
	if n.raft.Leader() == 0 {
		n.leaderLost.Store(time.Now().UnixNano())
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := n.raft.Run(gctx)
		cancel()
		if errors.Is(err, raftlog.ErrClosed) || errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
	g.Go(func() error { return n.drive(gctx) })
	if n.cfg.Membership != nil {
		g.Go(func() error { n.reconcile(gctx); return nil })
	}
	err := g.Wait()
	n.copies.stop() // apply has returned: raft's loop has ended
	n.copies = nil
	n.stopped.Store(true)
	n.failAll(fmt.Errorf("%w: node stopped", ErrClosed))
	return err
}

// Close stops Run, closes the raft log and the block store. Idempotent.
func (n *Node) Close() error {
	var err error
	n.once.Do(func() {
		close(n.closed)
		err = errors.Join(n.raft.Close(), n.store.Close())
		n.failAll(fmt.Errorf("%w", ErrClosed))
	})
	return err
}

// Pending is an admitted envelope on its way into a block.
type Pending struct {
	n      *Node
	key    txKey
	w      *waiter
	fwd    func(context.Context) error // set on a follower with a Forwarder
	leader uint64                      // the leader fwd went to
	gen    *leaderEpoch                // leaderGen when it was forwarded
	// Envelope is the admitted envelope.
	Envelope *block.Envelope
}

// Order admits raw (see the package doc for the checks) and hands it to the
// cutter. It does not wait for the block: call Wait. It fails with
// ErrNotLeader on a follower.
func (n *Node) Order(ctx context.Context, raw []byte) (*Pending, error) {
	env, err := n.adm.admitBroadcast(raw)
	if err != nil {
		return nil, err
	}
	return n.order(ctx, env)
}

// OrderEnvelope is Order for an envelope already parsed by block.ParseEnvelope.
func (n *Node) OrderEnvelope(ctx context.Context, env *block.Envelope) (*Pending, error) {
	if err := n.adm.checkBroadcast(env); err != nil {
		return nil, err
	}
	return n.order(ctx, env)
}

func (n *Node) order(ctx context.Context, env *block.Envelope) (*Pending, error) {
	raw := env.Raw
	k := keyOf(env.TxID())
	if n.stopped.Load() {
		// Its Run ended (Registry.Halt): nothing would cut the block.
		return nil, fmt.Errorf("%w: node stopped ordering", ErrUnavailable)
	}
	if err := n.membershipErr(); err != nil {
		return nil, err
	}
	l, gen, err := n.knownLeader(ctx)
	if err != nil {
		return nil, err
	}
	if l != n.raft.ID() {
		if n.cfg.Forwarder == nil {
			return nil, fmt.Errorf("%w: submit to raft node %d", ErrNotLeader, l)
		}
		n.mu.Lock()
		dup := n.recent.has(k)
		n.mu.Unlock()
		if dup {
			return nil, fmt.Errorf("%w: %s", ErrDuplicate, env.TxID())
		}
		// gen: the epoch l was read in (a change since has ended it).
		// Handing it over may block too (a dead leader reads nothing, so
		// the stream's window fills): not past a change of leader.
		fctx, stop := n.whileLeader(ctx, l, gen)
		wait, err := n.cfg.Forwarder.Forward(fctx, l, raw)
		stop()
		if err != nil {
			return nil, err
		}
		return &Pending{n: n, Envelope: env, fwd: wait, leader: l, gen: gen}, nil
	}
	w := &waiter{done: make(chan struct{})}
	n.mu.Lock()
	_, busy := n.waiters[k]
	if _, ordering := n.ordering[k]; busy || ordering || n.recent.has(k) {
		n.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrDuplicate, env.TxID())
	}
	n.waiters[k] = w
	n.mu.Unlock()
	p := &Pending{n: n, key: k, w: w, Envelope: env}
	select {
	case n.submitCh <- submission{raw: raw, key: k, w: w}:
		return p, nil
	case <-ctx.Done():
		p.drop()
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	case <-n.closed:
		p.drop()
		return nil, ErrClosed
	}
}

// Submit is Order then Wait: it returns nil once raw is in a committed,
// locally stored block.
func (n *Node) Submit(ctx context.Context, raw []byte) error {
	p, err := n.Order(ctx, raw)
	if err != nil {
		return err
	}
	return p.Wait(ctx)
}

// Wait returns nil once the envelope is in a block committed by raft and
// stored (fsynced) by this node (on a follower with a Forwarder: once the
// leader answered SUCCESS, which means the same on the leader); otherwise ErrUnavailable (leader change,
// SubmitTimeout, ctx) or ErrClosed, and the envelope may or may not be ordered.
func (p *Pending) Wait(ctx context.Context) error {
	if p.fwd != nil {
		return p.waitForwarded(ctx)
	}
	t := time.NewTimer(p.n.cfg.SubmitTimeout)
	defer t.Stop()
	select {
	case <-p.w.done:
		return p.w.err
	case <-t.C:
		p.drop()
		return fmt.Errorf("%w: not committed within %v; the envelope may still be ordered", ErrUnavailable, p.n.cfg.SubmitTimeout)
	case <-ctx.Done():
		p.drop()
		return fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
}

// errLeaderChanged cancels the wait of a forwarded submission.
var errLeaderChanged = errors.New("leader changed")

// waitForwarded waits for the leader's answer, but not past a change of
// raft leader away from the one the envelope went to: a deposed or dead
// leader may never answer (a connection through the tunnel to a vanished
// member does not fail for minutes), and the client should resubmit now
// rather than after SubmitTimeout.
func (p *Pending) waitForwarded(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.n.cfg.SubmitTimeout)
	defer cancel()
	ctx, stop := p.n.whileLeader(ctx, p.leader, p.gen)
	defer stop()
	err := p.fwd(ctx)
	if err != nil && errors.Is(context.Cause(ctx), errLeaderChanged) {
		return fmt.Errorf("%w: raft leader %d was replaced while it held the forwarded envelope, which may or may not be ordered: resubmit", ErrUnavailable, p.leader)
	}
	return err
}

// leaderEpoch lasts from one leader change to the next: ctx is cancelled
// when it ends. A context rather than a channel so that a forwarded
// submission can watch it with context.AfterFunc, without a goroutine of
// its own (a follower forwards thousands of envelopes a second).
type leaderEpoch struct {
	ctx context.Context
	end context.CancelFunc
}

func newLeaderEpoch() *leaderEpoch {
	ctx, end := context.WithCancel(context.Background())
	return &leaderEpoch{ctx: ctx, end: end}
}

// whileLeader returns ctx, also cancelled (cause errLeaderChanged) once the
// raft leader is no longer leader (gen: leaderGen when it was seen). It
// starts no goroutine: the check runs at the end of each leader epoch
// (context.AfterFunc), so that the goroutine count of a forwarding member
// does not follow the number of envelopes in flight.
func (n *Node) whileLeader(ctx context.Context, leader uint64, gen *leaderEpoch) (context.Context, context.CancelFunc) {
	ctx, abort := context.WithCancelCause(ctx)
	var (
		mu      sync.Mutex
		stopped bool
		unwatch func() bool
	)
	var watch func(gen *leaderEpoch)
	watch = func(gen *leaderEpoch) {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		unwatch = context.AfterFunc(gen.ctx, func() {
			if n.raft.Leader() != leader {
				abort(errLeaderChanged)
				return
			}
			watch(n.leaderGen.Load()) // re-elected: keep waiting
		})
	}
	watch(gen)
	return ctx, func() {
		mu.Lock()
		stopped = true
		unwatch()
		mu.Unlock()
		abort(nil)
	}
}

func (p *Pending) drop() {
	p.n.mu.Lock()
	if p.n.waiters[p.key] == p.w {
		delete(p.n.waiters, p.key)
	}
	p.n.mu.Unlock()
}

func (n *Node) failAll(err error) {
	n.mu.Lock()
	for k, w := range n.waiters {
		w.err = err
		close(w.done)
		delete(n.waiters, k)
	}
	n.mu.Unlock()
}

// leaderWaitElections: a submission that finds no leader waits for one at
// most this many election timeouts after the leader was lost (or Run
// started). An election ends one round trip after its first candidate's
// timeout, which comes between one and two election timeouts after the
// leader fell silent, but it is lost when no leader was known at most two
// (randomised) timeouts later; three leave room for a split vote.
const leaderWaitElections = 3

// knownLeader returns the raft leader and the leader epoch it was read
// in (a change of leader after the read ends it). While none is known (an election
// after the leader was lost, or at start-up), it waits for one rather than
// refusing at once, so that a client is answered SUCCESS once the new
// leader orders its envelope instead of SERVICE_UNAVAILABLE and its own
// backoff (a client may wait seconds before it resubmits); but only until
// leaderWaitElections election timeouts after the leader was lost, so
// that a node cut off from the others still refuses at once afterwards.
func (n *Node) knownLeader(ctx context.Context) (uint64, *leaderEpoch, error) {
	for {
		gen := n.leaderGen.Load() // before reading the leader: a change after it ends gen
		if l := n.raft.Leader(); l != 0 {
			return l, gen, nil
		}
		var wait time.Duration
		lost := n.leaderLost.Load()
		// raft says no leader before OnLeaderChange (it follows the
		// Ready's fsync, e.g. of a vote): take the later of the two.
		if at := n.raft.LeaderLostAt(); !at.IsZero() && at.UnixNano() > lost {
			lost = at.UnixNano()
		}
		if lost != 0 {
			wait = time.Until(time.Unix(0, lost).Add(leaderWaitElections * n.raft.ElectionTimeout()))
		}
		if wait <= 0 {
			return 0, nil, fmt.Errorf("%w: no raft leader known; retry", ErrUnavailable)
		}
		t := time.NewTimer(wait)
		select {
		case <-gen.ctx.Done():
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return 0, nil, fmt.Errorf("%w: no raft leader known: %w", ErrUnavailable, ctx.Err())
		case <-n.closed:
			t.Stop()
			return 0, nil, ErrClosed
		}
		t.Stop()
	}
}

func (n *Node) onLeaderChange(leader, term uint64) {
	n.log.Info("raft leader changed", "leader", leader, "term", term, "self", n.raft.ID())
	if leader == 0 {
		n.leaderLost.Store(time.Now().UnixNano())
	}
	n.leaderGen.Swap(newLeaderEpoch()).end()
	select {
	case n.leaderCh <- struct{}{}:
	default:
	}
}

func (n *Node) snapshotData(uint64) ([]byte, error) {
	h := n.store.LastHeader()
	out := binary.BigEndian.AppendUint64(nil, n.store.Height())
	return append(out, block.HeaderHash(h)...), nil
}

// apply writes the blocks of committed entries. It depends only on the log
// and the store (itself a product of the log), and for a config block on
// the policy version the entry names.
func (n *Node) apply(ctx context.Context, c raftlog.Commit) error {
	if c.Snapshot != nil {
		if err := n.catchUp(ctx, c.Snapshot.Data); err != nil {
			return err
		}
	}
	var blocks []*common.Block
	prev := n.store.LastHeader()
	// flush stores the blocks so far: a config block must be in force
	// before the entries after it are applied.
	flush := func() error {
		if len(blocks) == 0 {
			return nil
		}
		t0 := time.Now()
		if err := n.store.AppendBatch(blocks); err != nil {
			return fmt.Errorf("appending blocks %d..%d: %w", blocks[0].Header.Number, prev.Number, err)
		}
		n.cfg.Metrics.appended(time.Since(t0))
		n.committed(blocks)
		blocks = nil
		return nil
	}
	for _, e := range c.Entries {
		typ, b, err := n.cachedEntry(e.Data)
		if b == nil {
			typ, b, err = decodeEntry(e.Data)
		}
		if typ != entryBlock && typ != entryConfig {
			continue
		}
		if err != nil {
			n.log.Warn("skipping undecodable block entry", "raft_index", e.Index, "err", err)
			continue
		}
		if err := block.VerifyHeaderChain(b.Header, prev); err != nil || !bytes.Equal(b.Header.DataHash, block.DataHash(b.Data)) {
			// A deposed leader's proposal: another block took its number.
			n.log.Debug("skipping stale block entry", "raft_index", e.Index, "number", b.Header.Number)
			continue
		}
		var next *configInForce
		if typ == entryConfig {
			if next, err = n.checkConfigEntry(ctx, e.Data, b); err != nil {
				if errors.Is(err, channelconfig.ErrConfigMismatch) || errors.Is(err, channelconfig.ErrConfig) {
					// Every node that holds the policy version decides the same.
					n.log.Error("refusing config block: not applied", "raft_index", e.Index, "number", b.Header.Number, "err", err)
					n.cfg.Metrics.configBlock("refused")
					continue
				}
				return err
			}
		}
		lastConfig := n.LastConfig()
		if next != nil {
			lastConfig = b.Header.Number // a config block points to itself
		}
		md, err := proto.Marshal(&etcdraft.BlockMetadata{ConsenterIds: n.raft.Status().Voters, RaftIndex: e.Index})
		if err != nil {
			return err
		}
		if n.maySign() {
			if n.copies != nil {
				n.copies.stop()
				n.copies = nil
			}
			if err := n.signBlock(ctx, b, lastConfig, md); err != nil {
				return fmt.Errorf("signing block %d: %w", b.Header.Number, err)
			}
		} else if b, err = n.copyOf(ctx, b); err != nil {
			return err
		}
		blocks = append(blocks, b)
		prev = b.Header
		if next != nil {
			if err := flush(); err != nil {
				return err
			}
			n.putInForce(next)
			n.cfg.Metrics.configBlock("stored")
		}
	}
	return flush()
}

// signBlock signs b with the node's current identity. While the signer
// fails (block.ErrSigner: an HSM token that went away), it waits and tries
// again, 100 ms doubling to 2 s, until it signs or ctx ends: without its key
// the node cannot write blocks, but it must not stop for good (it did, and
// stayed stopped after the token was back until a restart).
func (n *Node) signBlock(ctx context.Context, b *common.Block, lastConfig uint64, md []byte) error {
	wait := 100 * time.Millisecond
	var since time.Time
	for {
		id := n.signing.Load()
		err := block.Sign(b, id.signer, id.identity, lastConfig, md, rand.Reader)
		if err == nil || !errors.Is(err, block.ErrSigner) {
			if err == nil && !since.IsZero() {
				n.log.Info("signing blocks again", "block", b.Header.Number, "waited", time.Since(since).Round(time.Millisecond))
			}
			return err
		}
		if since.IsZero() {
			since = time.Now()
			n.log.Error("cannot sign the next block: waiting for the signing key (is the HSM present?)", "block", b.Header.Number, "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// cachedEntry returns the block of an entry this leader proposed itself
// (byte-for-byte the same entry), nil otherwise.
func (n *Node) cachedEntry(data []byte) (entryType, *common.Block, error) {
	num, ok := peekBlockNumber(data)
	if !ok {
		return entryUnknown, nil, nil
	}
	n.mu.Lock()
	pb, ok := n.proposed[num]
	n.mu.Unlock()
	if !ok || pb.blk == nil || !bytes.Equal(pb.entry, data) {
		return entryUnknown, nil, nil
	}
	return entryBlock, pb.blk, nil
}

// committed records the tx ids of stored blocks and releases their waiters.
func (n *Node) committed(blocks []*common.Block) {
	var keys []txKey
	for _, b := range blocks {
		n.mu.Lock()
		pb, ok := n.proposed[b.Header.Number]
		delete(n.proposed, b.Header.Number)
		n.mu.Unlock()
		if ok && bytes.Equal(pb.dataHash, b.Header.DataHash) && len(pb.keys) == len(b.Data.Data) {
			keys = append(keys, pb.keys...)
			continue
		}
		for _, raw := range b.Data.Data {
			if e, err := block.ParseEnvelope(raw); err == nil {
				keys = append(keys, keyOf(e.TxID()))
			}
		}
	}
	n.mu.Lock()
	for _, k := range keys {
		n.recent.add(k)
		delete(n.ordering, k)
		if w, ok := n.waiters[k]; ok {
			close(w.done)
			delete(n.waiters, k)
		}
	}
	n.mu.Unlock()
	n.ordered.Add(uint64(len(keys)))
	select {
	case n.applied <- struct{}{}:
	default:
	}
}

// A catch-up batch is stored once it holds this many bytes or blocks.
const (
	catchUpBatchBytes  = 4 << 20
	catchUpBatchBlocks = 256
)

// catchUp brings the store to the height a raft snapshot stands for, pulling
// blocks from peers; the last one must hash to the snapshot's hash.
func (n *Node) catchUp(ctx context.Context, data []byte) error {
	if len(data) < 8 {
		return nil
	}
	height, hash := binary.BigEndian.Uint64(data), data[8:]
	// Figures for the log line once caught up: where the time went.
	var fig catchUpFigures
	fig.start = time.Now()
	fig.from = n.store.Height()
	for n.store.Height() < height {
		if n.cfg.Fetcher == nil {
			return fmt.Errorf("%w: have %d blocks, the raft snapshot needs %d and no BlockFetcher is configured", ErrCatchUp, n.store.Height(), height)
		}
		from := n.store.Height()
		n.log.Info("catching up from peers", "from", from, "to", height-1)
		// Stored in batches, one write and one fsync each: per block, the
		// fsyncs made catch-up slower than a loaded leader cuts blocks;
		// beside the fetch (batchStorer), which goes on meanwhile.
		// A crash loses at most the batches not yet stored, fetched again
		// on restart (the raft snapshot is durable, the store behind it).
		st := newBatchStorer(n.store.AppendRawBatch)
		err := n.cfg.Fetcher.FetchBlocks(ctx, from, height-1, func(raw []byte) error {
			fig.block(len(raw))
			return st.add(raw)
		})
		if serr := st.close(); serr != nil {
			err = errors.Join(err, serr)
		}
		fig.storing += st.storing
		if n.store.Height() >= height {
			break
		}
		fig.retries++
		n.log.Warn("catch-up incomplete; retrying", "height", n.store.Height(), "want", height, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if h := block.HeaderHash(n.store.LastHeader()); n.store.Height() == height && !bytes.Equal(h, hash) {
		return fmt.Errorf("%w: block %d fetched from peers does not match the raft snapshot's hash", ErrCatchUp, height-1)
	}
	if err := n.reloadInForce(); err != nil {
		return err
	}
	if err := n.loadRecent(); err != nil {
		return err
	}
	if fig.blocks > 0 {
		n.log.Info("caught up from peers", fig.attrs(n.store.Height())...)
	}
	return nil
}

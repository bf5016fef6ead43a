package appliance

// Channels added and dropped by a policy version while the appliance runs
// (a policy with ledger.channels; a single-channel ledger is untouched).
//
//	added    a channel the new version lists, whose consenters name this
//	         member, is opened at once: its own raft group on the raft
//	         port, its block store, its genesis block (below).
//	dropped  a channel the new version no longer lists stops ordering
//	         (orderer.Registry.Halt): no raft, no submissions; it stays
//	         listed (participation API, /status "dropped") and its blocks
//	         stay readable until the next start, which no longer opens it.
//	         A channel listed again after it was dropped orders again
//	         after a restart.
//
// The genesis block of an added channel is derived from the signed policy
// itself, never from a file, so that every consenter has the same block
// byte for byte without anything copied by hand: the channel config of the
// channel's view (orderer.ChannelConfig) in the policy version that added
// the channel (the first of the chain of versions, walked back through
// the policy history, that lists it), with a fixed timestamp (the Unix
// epoch) and a nonce hashed from that version's hash and the channel's
// name. A member that applies a later version first (it was down, or
// missed one) finds the same adding version in the history. Every
// consenter of the channel needs members[].ledger_consenter.tls_cert in
// that version, since the policy pins CAs, not node certificates. A
// ledger.genesis_blocks file, read at start, takes precedence, as for any
// channel; memberd.yaml is not reread while running, so a file cannot
// serve a live addition.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"

	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

// ledgerOpen is what opening a channel while running needs.
type ledgerOpen struct {
	dataDir string                           // cfg.Path(ledger.data_dir)
	history func(policy.Hash) *policy.Policy // the policy history (state_dir)
	idFile  string                           // the identity folder, for messages
}

// errNotDerivable: a channel's genesis block cannot be derived from the
// policy (see above).
var errNotDerivable = errors.New("genesis block not derivable from the policy")

// derivedGenesisEpoch is the timestamp of every derived genesis block.
var derivedGenesisEpoch = time.Unix(0, 0).UTC()

// derivedGenesis derives the genesis block of channel name from the
// policy version that added it (walking back from p; history finds the
// earlier versions). Pure but for history.
func derivedGenesis(p *policy.Policy, name string, history func(policy.Hash) *policy.Policy) (*common.Block, error) {
	if len(p.Ledger().Channels) == 0 {
		return nil, fmt.Errorf("%w: policy version %d has no ledger.channels", errNotDerivable, p.Version())
	}
	if _, err := p.ForChannel(name); err != nil {
		return nil, fmt.Errorf("%w: %w", errNotDerivable, err)
	}
	adding := p
	for {
		prev := adding.Previous()
		if prev == (policy.Hash{}) {
			return nil, fmt.Errorf("%w: channel %q is in the policy's first version %d: give its genesis block in ledger.genesis_blocks",
				errNotDerivable, name, adding.Version())
		}
		pp := history(prev)
		if pp == nil {
			return nil, fmt.Errorf("%w: channel %q: policy version %d, before version %d, is not in the policy history: give the channel's genesis block in ledger.genesis_blocks",
				errNotDerivable, name, adding.Version()-1, adding.Version())
		}
		if _, err := pp.ForChannel(name); err != nil {
			break // adding is the version that added the channel
		}
		adding = pp
	}
	v, err := adding.ForChannel(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotDerivable, err)
	}
	var missing []string
	for _, m := range v.Consenters() {
		if _, ok := channelconfig.PolicyConsenter(m); !ok {
			missing = append(missing, m.ID)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: channel %q added by policy version %d: consenters %v have no members[].ledger_consenter.tls_cert (the certificate their ledger node presents); "+
			"add it in a new version that lists the channel anew, or give the channel's genesis block in ledger.genesis_blocks and restart",
			errNotDerivable, name, adding.Version(), missing)
	}
	cc, err := orderer.ChannelConfig(v, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: channel %q added by policy version %d: %w", errNotDerivable, name, adding.Version(), err)
	}
	seed := sha256.Sum256([]byte("memberd derived genesis\x00" + adding.Hash().String() + "\x00" + name))
	return channelconfig.GenesisBlock(cc, derivedGenesisEpoch, &repeatReader{b: seed[:]})
}

// repeatReader reads b over and over (GenesisBlock's nonce source).
type repeatReader struct {
	b []byte
	i int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.b[r.i%len(r.b)]
		r.i++
	}
	return len(p), nil
}

var _ io.Reader = (*repeatReader)(nil)

// chanOf returns the channel name this ledger has opened (nil if none).
func (l *ledgerRun) chanOf(name string) *ledgerChannel {
	l.chansMu.Lock()
	defer l.chansMu.Unlock()
	return l.chans[name]
}

// channelNames returns the channels this ledger has opened, dropped ones
// included, in the order they were opened.
func (l *ledgerRun) channelNames() []string {
	l.chansMu.Lock()
	defer l.chansMu.Unlock()
	return slices.Clone(l.names)
}

// orderingNames returns the channels this ledger orders now (not dropped).
func (l *ledgerRun) orderingNames() []string {
	l.chansMu.Lock()
	defer l.chansMu.Unlock()
	var out []string
	for _, name := range l.names {
		if !l.chans[name].dropped.Load() {
			out = append(out, name)
		}
	}
	return out
}

// channelsChanged opens the channels p adds that this member orders and
// halts those p drops; old is the version p follows. A single-channel
// policy changes nothing here. Applying a version twice is harmless: a
// channel already open or dropped is left as it is.
func (l *ledgerRun) channelsChanged(old, p *policy.Policy) {
	if p == nil || len(p.Ledger().Channels) == 0 || l.open.dataDir == "" {
		return
	}
	l.liveMu.Lock()
	defer l.liveMu.Unlock()
	listed := p.Channels()
	for _, name := range listed {
		c := l.chanOf(name)
		if c != nil {
			if c.dropped.Load() {
				l.log.Warn("channel listed again by the policy after it was dropped: it orders again after the next start",
					"channel", name, "policy_version", p.Version())
			}
			continue
		}
		if !slices.Contains(p.ChannelConsenters(name), l.member) {
			continue // another channel's consenters order it
		}
		if err := l.addChannel(name, p, old); err != nil {
			l.log.Error("channel added by the policy not opened", "channel", name, "policy_version", p.Version(), "err", err)
		}
	}
	for _, name := range l.channelNames() {
		c := l.chanOf(name)
		if c == nil || slices.Contains(listed, name) || c.dropped.Load() {
			continue
		}
		c.dropped.Store(true)
		if err := l.reg.Halt(name); err != nil {
			l.log.Warn("channel dropped by the policy: node not halted", "channel", name, "err", err)
			continue
		}
		if c.fwd != nil {
			c.fwd.Close() // its Broadcast streams to the old leader (Close is idempotent)
		}
		var height uint64
		if n := l.reg.Lookup(name); n != nil {
			height = n.Height()
		}
		l.log.Warn("channel dropped by the policy: this node no longer orders it; its blocks stay readable until the next start",
			"channel", name, "policy_version", p.Version(), "height", height)
	}
}

// catchUp applies the versions that came in force while the ledger was
// starting (the policy subscription found no ledger to hand them to):
// from the version its channels were planned from to cur.
func (l *ledgerRun) catchUp(cur *policy.Policy) {
	if cur == nil || l.planned == nil || cur.Hash() == l.planned.Hash() {
		return
	}
	l.log.Info("policy applied while the ledger started: channels and consenters follow it now",
		"planned_policy_version", l.planned.Version(), "policy_version", cur.Version())
	l.channelsChanged(l.planned, cur)
	l.policyChanged()
}

// addChannel opens and starts channel name of p, which this member
// orders; old is the version p follows (also looked up in the history).
func (l *ledgerRun) addChannel(name string, p, old *policy.Policy) error {
	v, err := p.ForChannel(name)
	if err != nil {
		return err
	}
	raftDir := filepath.Join(l.open.dataDir, name, "raft")
	stored, _, err := raftlog.StoredID(raftDir)
	if err != nil {
		return fmt.Errorf("raft log in %s: %w", raftDir, err)
	}
	var genesis *common.Block
	if stored == 0 {
		history := func(h policy.Hash) *policy.Policy {
			if old != nil && old.Hash() == h {
				return old
			}
			return l.open.history(h)
		}
		if genesis, err = derivedGenesis(p, name, history); err != nil {
			return err
		}
	}
	c, err := l.newChannel(name, v, stored, genesis)
	if err != nil {
		return err
	}
	if err := l.connectChannel(c); err != nil {
		return err
	}
	l.chansMu.Lock()
	l.chans[name] = c
	l.names = append(l.names, name)
	l.chansMu.Unlock()
	undo := func() {
		l.chansMu.Lock()
		delete(l.chans, name)
		l.names = slices.DeleteFunc(l.names, func(s string) bool { return s == name })
		l.chansMu.Unlock()
		c.fwd.Close()
	}
	n, err := l.reg.Open(name, genesis)
	if err != nil {
		undo()
		return fmt.Errorf("channel %q in %s: %w", name, l.open.dataDir, err)
	}
	if err := l.startOpened(n); err != nil {
		undo()
		return err
	}
	l.log.Info("ledger channel opened: added by the policy", "channel", name, "policy_version", p.Version(),
		"raft_id", c.rs.id, "joining", c.rs.join, "consenters", len(c.rs.peers), "height", n.Height(), "derived_genesis", genesis != nil)
	return nil
}

// newChannel plans how this member takes part in channel name (view v):
// stored is the raft ID of its log (0: none), genesis its genesis block
// (nil when none is at hand).
func (l *ledgerRun) newChannel(name string, v *policy.Policy, stored uint64, genesis *common.Block) (*ledgerChannel, error) {
	c := &ledgerChannel{name: name, ids: map[uint64]string{}, genesis: genesis}
	c.view.Store(v)
	var genesisConsenters []string
	var err error
	if genesis != nil {
		if genesisConsenters, err = orderer.GenesisConsenters(v, genesis); err != nil {
			return nil, fmt.Errorf("%w: genesis block of channel %q (key ledger.genesis_block or ledger.genesis_blocks): %w", ErrLedger, name, err)
		}
	}
	if c.rs, err = planLedgerRaft(l.member, name, stored, v, genesisConsenters, l.cfg.RaftPort); err != nil {
		return nil, err
	}
	for _, pr := range c.rs.peers {
		c.ids[pr.ID] = pr.Name
	}
	return c, nil
}

// connectChannel sets up channel c's forwarder to its raft leader and the
// clients a node behind a snapshot fetches blocks from (connectPeers).
func (l *ledgerRun) connectChannel(c *ledgerChannel) error {
	c.fwd = &orderer.BroadcastForwarder{Lookup: func(rid uint64) ab.AtomicBroadcastClient {
		m := l.memberOf(c.name, rid)
		if m == "" || m == l.member {
			return nil
		}
		cl, err := l.clients.client(m)
		if err != nil {
			l.log.Warn("no gRPC client for the raft leader", "channel", c.name, "leader", m, "err", err)
			return nil
		}
		return cl
	}}
	for _, m := range c.view.Load().Consenters() {
		if m.ID == l.member {
			continue
		}
		cl, err := l.clients.client(m.ID)
		if err != nil {
			return err
		}
		c.fetchFrom.clients = append(c.fetchFrom.clients, cl)
		c.fetchFrom.members = append(c.fetchFrom.members, m.ID)
	}
	return nil
}

package orderer

// CONFIG blocks: a policy version that changes what the channel config
// mirrors (member orgs and their CAs, consenters and their TLS
// certificates, orderer endpoints, batch parameters) becomes a Fabric
// CONFIG transaction, ordered as a block of its own, as a stock Fabric
// orderer does after a channel update (etcdraft chain.go: a config message
// first cuts the pending batch, then goes alone into the next block, and no
// other block is proposed while it is in flight; blockwriter.go: a config
// block's LAST_CONFIG points to itself and every later block's to it).
//
// The raft leader derives the transaction (channelconfig.NextFromPolicy:
// from the config in force and the current policy version) and proposes it
// as a config entry that names the policy version and hash it came from
// (entry.go). Every node, the leader included, derives the transaction
// again from the same config in force and the same policy version before
// storing the block, and refuses a block whose Config or ConfigUpdate
// differs in any byte: it is not stored, on any node that holds that
// policy version, so the chain stays the same everywhere. A node whose
// policy is behind the version named waits for it (the policy folder);
// one that never saw that version cannot check the block and stops with
// an error rather than guess.
//
// The new config takes effect with the block after the config block: its
// batch parameters set the cutter, its AbsoluteMaxBytes admission, its
// MSPs the check of this node's signing identity.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// ErrConfigUnverifiable: a committed config block names a policy version
// this node never held, so it cannot check the block.
var ErrConfigUnverifiable = errors.New("config block cannot be checked")

// policyHistory bounds the policy versions a node remembers for checking
// config blocks that were derived from a version it has since replaced.
const policyHistory = 16

// configState is the policy versions seen, for checking config entries.
type configState struct {
	poke chan struct{} // wakes the driver to check the policy; immutable
	// stored is the highest policy version of a config block this node
	// stored since it started (policyFloor).
	stored atomic.Uint64

	mu    sync.Mutex // guards seen and order
	seen  map[policy.Hash]*policy.Policy
	order []policy.Hash // oldest first
}

func newConfigState() configState {
	return configState{poke: make(chan struct{}, 1), seen: map[policy.Hash]*policy.Policy{}}
}

// observePolicy returns the current policy and remembers it.
func (n *Node) observePolicy() *policy.Policy {
	p := n.cfg.Policy()
	if p == nil {
		return nil
	}
	s := &n.cfgtx
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[p.Hash()]; !ok {
		s.seen[p.Hash()] = p
		s.order = append(s.order, p.Hash())
		if len(s.order) > policyHistory {
			delete(s.seen, s.order[0])
			s.order = s.order[1:]
		}
	}
	return p
}

func (n *Node) seenPolicy(h policy.Hash) *policy.Policy {
	n.cfgtx.mu.Lock()
	defer n.cfgtx.mu.Unlock()
	return n.cfgtx.seen[h]
}

// policyFor returns the policy version src names, waiting while this node's
// policy is older.
func (n *Node) policyFor(ctx context.Context, src configSource, number uint64) (*policy.Policy, error) {
	warned := time.Now()
	for {
		cur := n.observePolicy()
		if p := n.seenPolicy(src.hash); p != nil {
			return p, nil
		}
		if n.cfg.PolicyHistory != nil {
			if p := n.cfg.PolicyHistory(src.hash); p != nil && p.Version() == src.version && p.Hash() == src.hash {
				return p, nil
			}
		}
		if cur != nil && cur.Version() >= src.version {
			return nil, fmt.Errorf("%w: config block %d was derived from policy version %d (%s), which this node never held and its policy history does not hold (its policy is version %d %s, it moved on while this node was down or behind): "+
				"this node stops ordering channel %q rather than guess; the other consenters go on. Put that version's bundle in the policy history "+
				"(history/ of the state folder, as 'memberd policy log' lists it) from another member's state folder and restart",
				ErrConfigUnverifiable, number, src.version, src.hash, cur.Version(), cur.Hash(), n.channel)
		}
		if time.Since(warned) > 10*time.Second {
			n.log.Warn("waiting for the policy version a config block was derived from: install its signed bundle in the policy folder",
				"number", number, "policy_version", src.version, "policy_hash", src.hash.String())
			warned = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-n.closed:
			return nil, ErrClosed
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// nextConfig derives the config transaction for policy version p from the
// config in force. A consenter member that is not a consenter of the
// config in force but was one in the genesis block (removed, then added
// back) gets its genesis consenter again; the policy carries no TLS
// certificates, so a consenter that is new to the channel has none, and
// the derivation fails naming it.
func (n *Node) nextConfig(p *policy.Policy) (*channelconfig.Update, error) {
	return n.nextConfigFrom(n.inForce.Load().ch, p)
}

// nextConfigFrom is nextConfig from the config of in.
func (n *Node) nextConfigFrom(in *channelconfig.Channel, p *policy.Policy) (*channelconfig.Update, error) {
	css := map[string]channelconfig.Consenter{}
	for _, m := range p.Consenters() {
		if _, ok := channelconfig.ConsenterOf(in.Config.Consenters, m); ok {
			continue
		}
		if cs, ok := channelconfig.ConsenterOf(n.genesisConsenters, m); ok {
			css[m.ID] = cs
		}
	}
	return channelconfig.NextFromPolicy(&common.Config{Sequence: in.Sequence, ChannelGroup: in.Group}, n.channel, p, css)
}

// checkConfigEntry checks config entry data (whose block is b, already
// found to chain to the store) and returns the config it puts in force.
// Errors wrapping channelconfig.ErrConfigMismatch or ErrConfig refuse the
// block; others stop apply.
func (n *Node) checkConfigEntry(ctx context.Context, data []byte, b *common.Block) (*configInForce, error) {
	src, _, err := decodeConfigEntry(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", channelconfig.ErrConfig, err)
	}
	if floor := n.raft.MembershipVersion(); src.version < floor {
		// Both layers move forward together: a config derived from an
		// older version than the raft membership follows would take the
		// channel back. The floor follows the log, so every node decides
		// the same.
		return nil, fmt.Errorf("%w: block %d was derived from policy version %d, older than version %d, which the raft membership already follows (a leader whose policy folder lagged)",
			channelconfig.ErrConfigMismatch, b.Header.Number, src.version, floor)
	}
	p, err := n.policyFor(ctx, src, b.Header.Number)
	if err != nil {
		return nil, err
	}
	u, err := n.nextConfig(p)
	if err != nil {
		return nil, fmt.Errorf("%w: block %d: policy version %d derives no config transaction here: %w",
			channelconfig.ErrConfigMismatch, b.Header.Number, src.version, err)
	}
	if err := channelconfig.CheckConfigBlock(b, u); err != nil {
		return nil, err
	}
	_, cue, err := channelconfig.ConfigTransactionOf(b)
	if err != nil {
		return nil, err
	}
	if err := n.ChannelConfig().CheckUpdateSigned(u, cue.Signatures); err != nil {
		return nil, fmt.Errorf("%w: block %d: %w", channelconfig.ErrConfigMismatch, b.Header.Number, err)
	}
	next, err := configOfBlock(b)
	if err != nil {
		return nil, err
	}
	n.log.Info("config block stored", "number", b.Header.Number, "sequence", u.Config.Sequence,
		"policy_version", src.version, "batch", fmt.Sprintf("%+v", next.cut))
	for cur := n.cfgtx.stored.Load(); src.version > cur; cur = n.cfgtx.stored.Load() {
		if n.cfgtx.stored.CompareAndSwap(cur, src.version) {
			break
		}
	}
	return next, nil
}

// policyFloor is the newest policy version this node knows the log has
// applied: that of the last raft membership change (the log's
// MembershipVersion) or of a config block stored since it started. A
// leader whose policy is older proposes neither a membership change nor a
// config block (both would take the consortium back to its older view);
// it waits for its policy folder to catch up.
func (n *Node) policyFloor() uint64 {
	return max(n.raft.MembershipVersion(), n.cfgtx.stored.Load())
}

// putInForce makes c the config in force.
func (n *Node) putInForce(c *configInForce) {
	n.inForce.Store(c)
	n.adm.maxBytes.Store(c.cut.AbsoluteMaxBytes)
}

// reloadInForce puts the config of the store's last config block in force
// (after blocks were appended from peers).
func (n *Node) reloadInForce() error {
	last, err := n.store.Get(n.store.Height() - 1)
	if err != nil {
		return err
	}
	lc, err := block.LastConfigIndex(last)
	if err != nil || lc == n.LastConfig() {
		return nil
	}
	b, err := n.store.Get(lc)
	if err != nil {
		return fmt.Errorf("last config block %d: %w", lc, err)
	}
	c, err := configOfBlock(b)
	if err != nil {
		return err
	}
	n.putInForce(c)
	return nil
}

// configBlock returns the unsigned config block number num (after
// prevHash) holding the CONFIG transaction u, signed by this node, with
// the admin signatures of policy version p (#cfgsig) that are valid
// signatures on u's ConfigUpdate. It fails with ErrUnderSigned when they
// do not authorise u as a stock peer would check it (that peer would stop
// at the block).
func (n *Node) configBlock(u *channelconfig.Update, p *policy.Policy, num uint64, prevHash []byte) (*common.Block, error) {
	sigs, invalid, err := adminSignatures(u, p)
	if err != nil {
		return nil, err
	}
	for _, err := range invalid {
		n.log.Warn("admin signature of the policy bundle left out of the CONFIG block", "policy_version", p.Version(), "err", err)
	}
	if err := n.ChannelConfig().CheckUpdateSigned(u, sigs); err != nil {
		return nil, err
	}
	id := n.signing.Load()
	env, err := channelconfig.ConfigTransaction(u, sigs, channelconfig.Signer{Key: id.signer, Identity: id.identity}, n.cfg.Now(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return block.New(num, prevHash, [][]byte{env}), nil
}

// pokeConfig wakes the driver to compare the policy with the config in force.
func (n *Node) pokeConfig() {
	select {
	case n.cfgtx.poke <- struct{}{}:
	default:
	}
}

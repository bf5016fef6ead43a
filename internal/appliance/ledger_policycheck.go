package appliance

import (
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/memberd/memberd/policy"
)

// ledgerPolicyCheck is the watcher's policy.Options.Check of an appliance
// whose ledger orders CONFIG blocks (ledger.config_blocks): a version is
// applied to the network (tunnel, relays, raft membership) only when its
// channel half would be ordered and validated too (orderer.Node.
// CheckPolicyVersion); nil (no check) otherwise. Until the ledger runs,
// versions are held; a member whose channel is not open (to be joined
// through the participation API), or that is not a consenter of the
// version in force (its node no longer receives the channel's blocks, so
// its config in force would hold every later version back), has no
// channel config to keep in step and accepts on the votes alone, as relays
// do; the consenters check for the consortium.
func ledgerPolicyCheck(cfg *Config, ledger *atomic.Pointer[ledgerRun]) func(cur, next *policy.Policy) error {
	if cfg.Ledger == nil || !cfg.Ledger.ConfigBlocks {
		return nil
	}
	return func(cur, next *policy.Policy) error {
		if !slices.ContainsFunc(cur.Consenters(), func(m *policy.Member) bool { return m.ID == cfg.Member }) {
			return nil // also a member that a later version adds, at its first start
		}
		l := ledger.Load()
		if l == nil {
			return fmt.Errorf("%w: the ledger is not running yet", policy.ErrHeld)
		}
		// Only the channels this node orders: a dropped channel's node is
		// halted and never stores another CONFIG block, so checking it
		// would hold every later version that lists the channel again.
		for _, name := range l.orderingNames() {
			n := l.reg.Lookup(name)
			if n == nil {
				continue
			}
			cv, err := cur.ForChannel(name)
			if err != nil {
				continue
			}
			nv, err := next.ForChannel(name)
			if err != nil {
				continue // a channel the version drops keeps its last config
			}
			if err := n.CheckPolicyVersion(cv, nv); err != nil {
				return err
			}
		}
		return nil
	}
}

// policyHistory finds an applied policy version in the state folder's
// history (orderer.Config.PolicyHistory).
func policyHistory(stateDir string, log *slog.Logger) func(policy.Hash) *policy.Policy {
	return func(h policy.Hash) *policy.Policy {
		p, err := policy.FindHistory(stateDir, h)
		if err != nil {
			log.Warn("policy history unreadable", "state_dir", stateDir, "policy_hash", h.String(), "err", err)
		}
		return p
	}
}

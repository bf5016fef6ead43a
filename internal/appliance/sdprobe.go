package appliance

import (
	"context"
	"fmt"
	"slices"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/daemon"
)

// applianceProbe: ready when the admin endpoint's readiness checks pass (a
// relay connected, this member in the policy, a raft leader known) and the
// ledger has applied every raft entry known to be committed.
func applianceProbe(a *Appliance, checks map[string]admin.Check) daemon.Probe {
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	slices.Sort(names)
	return daemon.Probe{
		Ready: func(ctx context.Context) error {
			for _, n := range names {
				if err := checks[n](ctx); err != nil {
					return fmt.Errorf("%s: %w", n, err)
				}
			}
			if a.ledger != nil {
				return a.ledger.caughtUp()
			}
			return nil
		},
		Alive: func() { applianceStatus(a) },
	}
}

// caughtUp: in every channel, a raft leader is known and this node has
// applied every entry it knows to be committed.
func (l *ledgerRun) caughtUp() error {
	for _, name := range l.names {
		n := l.reg.Lookup(name)
		if n == nil {
			return fmt.Errorf("ledger: channel %q is not open", name)
		}
		if err := n.Healthy(); err != nil {
			return fmt.Errorf("ledger: channel %q: %w", name, err)
		}
		if rs := n.Raft().Status(); rs.Applied < rs.Commit {
			return fmt.Errorf("ledger channel %q catching up: raft entry %d of %d applied", name, rs.Applied, rs.Commit)
		}
	}
	return nil
}

package orderer

import (
	"fmt"

	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// DefaultPort is the ledger gRPC port a channel config names for each
// consenter when no endpoint is given.
const DefaultPort = channelconfig.DefaultPort

// ChannelConfig returns the Fabric channel configuration for the policy's
// ledger (channelconfig.FromPolicy, whose errors here also match
// ErrInvalidConfig). The client-facing orderer endpoints fall back to the
// consenter address for members without ledger_endpoints (see
// MissingLedgerEndpoints).
func ChannelConfig(p *policy.Policy, consenters map[string]channelconfig.Consenter) (channelconfig.Config, error) {
	c, err := channelconfig.FromPolicy(p, consenters)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return c, nil
}

// MissingLedgerEndpoints lists the consenter members of p without
// members[].ledger_endpoints: ChannelConfig names their overlay consenter
// address as their orderer endpoint, which Fabric peers outside the tunnel
// cannot reach.
func MissingLedgerEndpoints(p *policy.Policy) []string {
	var ids []string
	for _, m := range p.Consenters() {
		if len(m.LedgerEndpoints) == 0 {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

func pemCerts(s string) [][]byte { return channelconfig.PEMCerts(s) }

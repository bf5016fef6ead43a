package orderer

// Both layers or neither: with ConfigBlocks, a policy version is accepted
// by the appliance (policy.Options.Check) only if the CONFIG block it
// derives would be ordered and validated, so that the network half (ACL,
// members, relays, raft membership) never moves to a version the channel
// config refuses.

import (
	"errors"
	"fmt"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// CheckPolicyVersion is the channel half of accepting policy version next
// while cur is applied; it fits policy.Options.Check. Without ConfigBlocks
// it accepts everything. Otherwise it derives the update next makes to the
// config in force and checks that the admin signatures of next's bundle
// (#cfgsig) meet the mod_policies of what it changes, as a stock peer
// checks the CONFIG block; a version that changes nothing in the channel
// config passes. The error wraps policy.ErrChannelConfig with the reason,
// or policy.ErrHeld while the CONFIG block of cur is still to be stored
// (next's signatures are on the update from the config cur puts in force,
// so it can only be checked once that config is in force).
func (n *Node) CheckPolicyVersion(cur, next *policy.Policy) error {
	if !n.cfg.ConfigBlocks {
		return nil
	}
	in := n.inForce.Load().ch
	if u, err := n.nextConfigFrom(in, cur); err == nil && adminsSigned(in, u, cur) == nil {
		return fmt.Errorf("%w: the CONFIG block of policy version %d (channel %q, config sequence %d) is not stored yet; version %d is checked once it is",
			policy.ErrHeld, cur.Version(), n.channel, u.Config.Sequence, next.Version())
	}
	u, err := n.nextConfigFrom(in, next)
	if errors.Is(err, channelconfig.ErrNoChange) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: channel %q: %w", policy.ErrChannelConfig, n.channel, err)
	}
	if err := adminsSigned(in, u, next); err != nil {
		return fmt.Errorf("%w: channel %q, update to config sequence %d (run 'memberd policy verify --config-block <last config block> --current <policy in force> <bundle>' to see the signatures): %w",
			policy.ErrChannelConfig, n.channel, u.Config.Sequence, err)
	}
	return nil
}

// adminsSigned checks that the valid admin signatures of p's bundle on u's
// ConfigUpdate authorise u against in, the config u starts from.
func adminsSigned(in *channelconfig.Channel, u *channelconfig.Update, p *policy.Policy) error {
	sigs, _, err := adminSignatures(u, p)
	if err != nil {
		return err
	}
	return in.CheckUpdateSigned(u, sigs)
}

// adminSignatures returns the #cfgsig signatures of p's bundle that are
// valid signatures on u's ConfigUpdate, and why each other is not.
func adminSignatures(u *channelconfig.Update, p *policy.Policy) ([]*common.ConfigSignature, []error, error) {
	cu, err := u.ConfigUpdateBytes()
	if err != nil {
		return nil, nil, err
	}
	var raws [][]byte
	for _, s := range p.ConfigSignatures() {
		raws = append(raws, s.Raw)
	}
	sigs, invalid := channelconfig.ConfigSignatures(cu, raws)
	return sigs, invalid, nil
}

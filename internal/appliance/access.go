package appliance

import (
	"context"
	"errors"
	"slices"

	"github.com/memberd/memberd/identity"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/tunnel"
)

// What a running appliance shows its caller (the demo consortium, tests).
// The accessors answer once Ready is closed, for as long as Run runs.

// AdminAddr is the bound admin endpoint address.
func (a *Appliance) AdminAddr() string { return a.admin }

// Device is the appliance's tunnel.
func (a *Appliance) Device() *tunnel.Device { return a.dev }

// RelayClient is the appliance's relay client.
func (a *Appliance) RelayClient() *relay.Client { return a.client }

// Policy is the policy in force.
func (a *Appliance) Policy() *policy.Policy { return a.current.Load() }

// Identity is the identity in use now.
func (a *Appliance) Identity() *identity.Identity { return a.idp.Current() }

// errNoLedger: the configuration has no ledger section.
var errNoLedger = errors.New("no ledger section: the appliance runs no ledger node")

// HasLedger says whether the appliance runs a ledger node.
func (a *Appliance) HasLedger() bool { return a.ledger != nil }

// LedgerAddr is the ledger's LAN gRPC address ("" without a ledger).
func (a *Appliance) LedgerAddr() string {
	if a.ledger == nil {
		return ""
	}
	return a.ledger.Addr()
}

// LedgerAdminAddr is the address of the channel participation API
// ("" without one).
func (a *Appliance) LedgerAdminAddr() string {
	if a.ledger == nil {
		return ""
	}
	return a.ledger.AdminAddr()
}

// LedgerReady is the ledger's readiness check (a raft leader known).
func (a *Appliance) LedgerReady(ctx context.Context) error {
	if a.ledger == nil {
		return errNoLedger
	}
	return a.ledger.ready(ctx)
}

// LedgerChannel is the ledger's channel ("" without a ledger).
func (a *Appliance) LedgerChannel() string {
	if a.ledger == nil {
		return ""
	}
	return a.ledger.channel
}

// LedgerNode is the ledger's node of its channel (nil without a ledger, or
// while the channel is not open).
func (a *Appliance) LedgerNode() *orderer.Node {
	if a.ledger == nil {
		return nil
	}
	return a.ledger.reg.Lookup(a.ledger.channel)
}

// LedgerChannels are the channels the ledger orders, in policy order (nil
// without a ledger).
func (a *Appliance) LedgerChannels() []string {
	if a.ledger == nil {
		return nil
	}
	return slices.Clone(a.ledger.names)
}

// LedgerChannelNode is the ledger's node of channel (nil without a ledger,
// or while the channel is not open here).
func (a *Appliance) LedgerChannelNode(channel string) *orderer.Node {
	if a.ledger == nil {
		return nil
	}
	return a.ledger.reg.Lookup(channel)
}

package orderer

import (
	"encoding/pem"
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// DefaultPort is the ledger gRPC port a channel config names for each
// consenter when no endpoint is given.
const DefaultPort = 7050

// ChannelConfig returns the Fabric channel configuration for the policy's
// ledger: one organisation per member (its CA certificates; the orderer
// group holds the consenters, the application group every member), the
// policy's BatchSize/BatchTimeout, and one etcdraft consenter per consenter
// member (in ledger.consenters order, which fixes their raft IDs 1..N).
// consenters gives, per member id, the consenter's endpoint and TLS
// certificates (the policy pins CAs, not node certificates); Host and Port
// default to the member's overlay address and DefaultPort.
//
// The consenter address is where the other consenters reach the node (raft
// and gRPC between consenters, over the tunnel). The client-facing address,
// where Fabric peers and SDKs dial Broadcast and Deliver, is the member's
// orderer org Endpoints value: the policy's members[].ledger_endpoints, or
// the consenter address when the member gives none (see
// MissingLedgerEndpoints).
func ChannelConfig(p *policy.Policy, consenters map[string]channelconfig.Consenter) (channelconfig.Config, error) {
	l := p.Ledger()
	c := channelconfig.Config{
		ChannelID: l.Channel,
		Batch: block.CutterConfig{MaxMessageCount: l.BatchSize.MaxMessageCount,
			AbsoluteMaxBytes: l.BatchSize.AbsoluteMaxBytes, PreferredMaxBytes: l.BatchSize.PreferredMaxBytes,
			BatchTimeout: l.Timeout},
	}
	orgs := map[string]channelconfig.Org{}
	for _, m := range p.Members() {
		org := channelconfig.Org{Name: m.MSPID, MSPID: m.MSPID, RootCerts: pemCerts(m.CACerts)}
		org.TLSRootCerts = pemCerts(m.TLSCACerts)
		if len(org.TLSRootCerts) == 0 {
			org.TLSRootCerts = org.RootCerts
		}
		c.ApplicationOrgs = append(c.ApplicationOrgs, org)
		orgs[m.ID] = org
	}
	// Consenters in ledger.consenters order: the genesis consenters' raft IDs
	// are their positions (GenesisConsenters reads them back).
	for _, m := range p.Consenters() {
		org := orgs[m.ID]
		cs, ok := consenters[m.ID]
		if !ok {
			return c, fmt.Errorf("%w: consenter member %q has no consenter entry (TLS certificates)", ErrInvalidConfig, m.ID)
		}
		if cs.Host == "" {
			cs.Host = m.OverlayIP
		}
		if cs.Port == 0 {
			cs.Port = DefaultPort
		}
		org.OrdererEndpoints = slices.Clone(m.LedgerEndpoints)
		if len(org.OrdererEndpoints) == 0 {
			org.OrdererEndpoints = []string{net.JoinHostPort(cs.Host, strconv.Itoa(int(cs.Port)))}
		}
		c.OrdererOrgs = append(c.OrdererOrgs, org)
		c.Consenters = append(c.Consenters, cs)
	}
	return c, c.Validate()
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

func pemCerts(s string) [][]byte {
	var out [][]byte
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, pem.EncodeToMemory(b))
		}
	}
}

package channelconfig

import (
	"encoding/pem"
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// DefaultPort is the ledger gRPC port a channel config names for each
// consenter when no endpoint is given.
const DefaultPort = 7050

// FromPolicy returns the Fabric channel configuration for the policy's
// ledger: one organisation per member (its CA certificates and CRLs; the
// orderer group holds the consenters, the application group every member,
// read-only when the member lacks the writer role), the
// policy's BatchSize/BatchTimeout, and one etcdraft consenter per consenter
// member (in ledger.consenters order, which fixes their raft IDs 1..N).
// A consenter member's entry is its members[].ledger_consenter in the
// policy (PolicyConsenter) when it has one, else consenters[member id]
// (endpoint and TLS certificates given from outside the policy); Host and
// Port default to the member's overlay address and DefaultPort. Raft
// options are left zero (configtxgen's defaults).
//
// The consenter address is where the other consenters reach the node (raft
// and gRPC between consenters, over the tunnel). The client-facing address,
// where Fabric peers and SDKs dial Broadcast and Deliver, is the member's
// orderer org Endpoints value: the policy's members[].ledger_endpoints, or
// the consenter address when the member gives none.
//
// A policy with ledger.channels holds several channels: pass the view of
// one (policy.Policy.ForChannel).
func FromPolicy(p *policy.Policy, consenters map[string]Consenter) (Config, error) {
	l := p.Ledger()
	if len(l.Channels) > 0 {
		return Config{}, fmt.Errorf("%w: policy version %d lists ledger.channels (%v): a channel config is derived from the view of one channel (policy.ForChannel)",
			ErrConfig, p.Version(), p.Channels())
	}
	c := Config{
		ChannelID: l.Channel,
		Batch: block.CutterConfig{MaxMessageCount: l.BatchSize.MaxMessageCount,
			AbsoluteMaxBytes: l.BatchSize.AbsoluteMaxBytes, PreferredMaxBytes: l.BatchSize.PreferredMaxBytes,
			BatchTimeout: l.Timeout},
	}
	orgs := map[string]Org{}
	for _, m := range p.Members() {
		org := Org{Name: m.MSPID, MSPID: m.MSPID, RootCerts: PEMCerts(m.CACerts)}
		org.TLSRootCerts = PEMCerts(m.TLSCACerts)
		if len(org.TLSRootCerts) == 0 {
			org.TLSRootCerts = org.RootCerts
		}
		for _, crl := range m.CRL {
			org.CRLs = append(org.CRLs, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.List.Raw}))
		}
		app := org
		app.ReadOnly = !m.HasRole(policy.RoleWriter)
		c.ApplicationOrgs = append(c.ApplicationOrgs, app)
		orgs[m.ID] = org
	}
	// Consenters in ledger.consenters order: the genesis consenters' raft IDs
	// are their positions.
	for _, m := range p.Consenters() {
		org := orgs[m.ID]
		cs, ok := PolicyConsenter(m)
		if !ok {
			cs, ok = consenters[m.ID]
		}
		if !ok {
			return c, fmt.Errorf("%w: consenter member %q has no consenter entry (TLS certificates): give it members[].ledger_consenter in the policy", ErrConfig, m.ID)
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

// PolicyConsenter returns the consenter entry m's policy gives it
// (members[].ledger_consenter), if any: its TLS certificate as client and
// server certificate, at m's overlay address and the given port.
func PolicyConsenter(m *policy.Member) (Consenter, bool) {
	lc := m.LedgerConsenter
	if lc == nil || lc.Cert == nil {
		return Consenter{}, false
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: lc.Cert.Raw})
	return Consenter{Host: m.OverlayIP, Port: uint32(lc.Port), ClientTLSCert: pemBytes, ServerTLSCert: pemBytes}, true
}

// PEMCerts returns each CERTIFICATE block of the PEM text s, re-encoded on
// its own; other blocks are skipped.
func PEMCerts(s string) [][]byte {
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

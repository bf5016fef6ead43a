package orderer

import (
	"crypto/rand"
	"slices"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestChannelConfigEndpoints: the orderer org Endpoints (what Fabric peers
// dial) come from members[].ledger_endpoints and stay apart from the raft
// consenter address on the overlay; a member without ledger_endpoints falls
// back to its consenter address and is reported.
func TestChannelConfigEndpoints(t *testing.T) {
	c := policytest.New(t, 2)
	c.Template.Members[0].LedgerEndpoints = []string{"127.0.0.1:7050", "ledger.m1.example:7050"}
	p := c.Genesis(t)
	css := map[string]channelconfig.Consenter{}
	for _, m := range p.Consenters() {
		cert := c.CAs[m.ID].Issue(t, m.ID+"-tls").Cert
		pem := hsm.EncodePEM("CERTIFICATE", cert.Raw)
		css[m.ID] = channelconfig.Consenter{Port: 7053, ClientTLSCert: pem, ServerTLSCert: pem}
	}
	cc, err := ChannelConfig(p, css)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"m1MSP": {"127.0.0.1:7050", "ledger.m1.example:7050"}, "m2MSP": {p.Member("m2").OverlayIP + ":7053"}}
	for _, o := range cc.OrdererOrgs {
		if !slices.Equal(o.OrdererEndpoints, want[o.MSPID]) {
			t.Errorf("%s endpoints %q, want %q", o.MSPID, o.OrdererEndpoints, want[o.MSPID])
		}
	}
	for i, m := range []*policy.Member{p.Member("m1"), p.Member("m2")} {
		if cs := cc.Consenters[i]; cs.Host != m.OverlayIP || cs.Port != 7053 {
			t.Errorf("consenter %d: %s:%d, want the overlay address %s:7053", i, cs.Host, cs.Port, m.OverlayIP)
		}
	}
	if got := MissingLedgerEndpoints(p); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("MissingLedgerEndpoints = %q, want [m2]", got)
	}
	// The endpoints survive the genesis block: what a peer reads.
	b, err := channelconfig.GenesisBlock(cc, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := channelconfig.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ch.Config.OrdererOrgs {
		if !slices.Equal(o.OrdererEndpoints, want[o.MSPID]) {
			t.Errorf("genesis block: %s endpoints %q, want %q", o.MSPID, o.OrdererEndpoints, want[o.MSPID])
		}
	}
}

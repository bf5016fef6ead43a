package appliance

import (
	"bytes"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestDerivedGenesis: the genesis block of a channel a version adds is the
// same bytes however often and from whichever later version it is derived
// (it comes from the adding version, found through the history); a
// channel of the first version, a history gap, or a consenter without
// members[].ledger_consenter.tls_cert is refused with the fix named.
func TestDerivedGenesis(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	tlsCert := func(id string) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.CAs[id].Issue(t, id+" tls").Cert.Raw}))
	}
	v2 := c.Next(t, g, func(d *policy.Document) {
		d.Ledger.Channel = ""
		d.Ledger.Channels = []*policy.Channel{{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}}}
	}, "m1", "m2", "m3")
	v3 := c.Next(t, v2, func(d *policy.Document) {
		d.Ledger.Channels = append(d.Ledger.Channels, &policy.Channel{Name: "gamma", Consenters: []string{"m2", "m3"}, Members: []string{"m2", "m3"}})
		for _, m := range d.Members {
			if m.ID != "m1" {
				m.LedgerConsenter = &policy.LedgerConsenter{TLSCert: tlsCert(m.ID), Port: 7053}
			}
		}
	}, "m1", "m2", "m3")
	v4 := c.Next(t, v3, func(d *policy.Document) { d.Description = "later" }, "m1", "m2", "m3")
	history := func(h policy.Hash) *policy.Policy {
		for _, p := range []*policy.Policy{g, v2, v3, v4} {
			if p.Hash() == h {
				return p
			}
		}
		return nil
	}
	var raws [][]byte
	for _, p := range []*policy.Policy{v3, v3, v4} {
		b, err := derivedGenesis(p, "gamma", history)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := block.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
	}
	if !bytes.Equal(raws[0], raws[1]) || !bytes.Equal(raws[0], raws[2]) {
		t.Fatal("gamma's derived genesis differs between runs or versions")
	}
	b, _ := block.Unmarshal(raws[0])
	ch, err := channelconfig.Parse(b)
	if err != nil || ch.Config.ChannelID != "gamma" || len(ch.Config.Consenters) != 2 || len(ch.Config.ApplicationOrgs) != 2 {
		t.Fatalf("derived genesis: %v, %+v", err, ch)
	}

	c1 := policytest.New(t, 3)
	c1.Template.Ledger.Channel = ""
	c1.Template.Ledger.Channels = []*policy.Channel{{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}}}
	first := c1.Genesis(t)
	for _, tc := range []struct {
		name    string
		p       *policy.Policy
		channel string
		history func(policy.Hash) *policy.Policy
		want    string
	}{
		{"added two versions back, without TLS certificates then", v4, "alpha", history, "channel \"alpha\" added by policy version 2: consenters [m1 m2 m3] have no"},
		{"channel of the first version", first, "alpha", history, "alpha\" is in the policy's first version 1"},
		{"history gap", v4, "gamma", func(h policy.Hash) *policy.Policy {
			if h == v3.Hash() {
				return v3
			}
			return nil
		}, "policy version 2, before version 3, is not in the policy history"},
		{"no TLS certificate", c.Next(t, v2, func(d *policy.Document) {
			d.Ledger.Channels = append(d.Ledger.Channels, &policy.Channel{Name: "delta", Consenters: []string{"m1"}})
		}, "m1", "m2", "m3"), "delta", history, "consenters [m1] have no members[].ledger_consenter.tls_cert"},
		{"single channel", g, "trade", history, "has no ledger.channels"},
	} {
		_, err := derivedGenesis(tc.p, tc.channel, tc.history)
		if !errors.Is(err, errNotDerivable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestViewOfDroppedChannel: a channel the policy drops keeps its last
// ledger section, but its node's policy view (Deliver admission) follows
// the later version's revocations.
func TestViewOfDroppedChannel(t *testing.T) {
	c := policytest.New(t, 2)
	two := func(d *policy.Document) {
		d.Ledger.Channel = ""
		d.Ledger.Channels = []*policy.Channel{{Name: "alpha", Consenters: []string{"m1"}}, {Name: "beta", Consenters: []string{"m2"}}}
	}
	p := c.Next(t, c.Genesis(t), two, "m1", "m2")
	cert := c.CAs["m1"].Issue(t, "m1 client").Cert
	next := c.Next(t, p, func(d *policy.Document) {
		d.Ledger.Channels = d.Ledger.Channels[:1]
		d.Revocations.Certificates = append(d.Revocations.Certificates, &policy.RevokedCert{Member: "m1", Serial: cert.SerialNumber.String()})
	}, "m1", "m2")
	l := &ledgerRun{}
	ch := &ledgerChannel{name: "beta"}
	if v := l.viewOf(ch, p); v == nil || v.Revoked("m1", cert) {
		t.Fatalf("view of p: %v", v)
	}
	v := l.viewOf(ch, next)
	if v == nil || v.Ledger().Channel != "beta" || !slices.Equal(v.Ledger().Consenters, []string{"m2"}) {
		t.Fatalf("dropped channel's view %+v, want beta's last ledger section", v)
	}
	if !v.Revoked("m1", cert) {
		t.Error("the dropped channel's view ignores a later revocation")
	}
	if again := l.viewOf(ch, next); again != v {
		t.Error("the kept view is rebuilt on every call")
	}
}

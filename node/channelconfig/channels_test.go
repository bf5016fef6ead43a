package channelconfig

import (
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestFromPolicyPerChannel: with ledger.channels, each channel's view of
// the policy gives that channel's config: its id, only its member orgs
// (Application) and consenters (Orderer, in the channel's order), and its
// own batch parameters; and a version that changes one channel changes
// that channel's config alone.
func TestFromPolicyPerChannel(t *testing.T) {
	f := newUpdateFixture(t)
	edit := func(d *policy.Document) {
		d.Ledger.Channel = ""
		d.Ledger.Channels = []*policy.Channel{
			{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}},
			{Name: "beta", Consenters: []string{"m3", "m2"}, Members: []string{"m2", "m3"},
				BatchSize: &policy.BatchSize{MaxMessageCount: 3, AbsoluteMaxBytes: 1 << 20, PreferredMaxBytes: 1 << 19}, BatchTimeout: "100ms"},
		}
	}
	p := policytest.MustParse(t, f.c.NextDocument(t, f.genesis, edit))
	if _, err := FromPolicy(p, f.tls); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "policy.ForChannel") {
		t.Fatalf("FromPolicy of a whole multi-channel policy: %v, want ErrConfig naming ForChannel", err)
	}
	cfgOf := func(p *policy.Policy, ch string) Config {
		t.Helper()
		v, err := p.ForChannel(ch)
		if err != nil {
			t.Fatal(err)
		}
		c, err := FromPolicy(v, f.tls)
		if err != nil {
			t.Fatalf("channel %s: %v", ch, err)
		}
		return c
	}
	msps := func(orgs []Org) []string {
		var out []string
		for _, o := range orgs {
			out = append(out, o.MSPID)
		}
		return out
	}
	alpha, beta := cfgOf(p, "alpha"), cfgOf(p, "beta")
	if alpha.ChannelID != "alpha" || !slices.Equal(msps(alpha.ApplicationOrgs), []string{"m1MSP", "m2MSP", "m3MSP"}) ||
		!slices.Equal(msps(alpha.OrdererOrgs), []string{"m1MSP", "m2MSP", "m3MSP"}) || alpha.Batch.MaxMessageCount != p.Ledger().BatchSize.MaxMessageCount {
		t.Fatalf("alpha: %s, application %v, orderer %v, batch %+v", alpha.ChannelID, msps(alpha.ApplicationOrgs), msps(alpha.OrdererOrgs), alpha.Batch)
	}
	if beta.ChannelID != "beta" || !slices.Equal(msps(beta.ApplicationOrgs), []string{"m2MSP", "m3MSP"}) ||
		!slices.Equal(msps(beta.OrdererOrgs), []string{"m3MSP", "m2MSP"}) || len(beta.Consenters) != 2 ||
		beta.Batch.MaxMessageCount != 3 || beta.Batch.BatchTimeout != 100*time.Millisecond {
		t.Fatalf("beta: %s, application %v, orderer %v, batch %+v", beta.ChannelID, msps(beta.ApplicationOrgs), msps(beta.OrdererOrgs), beta.Batch)
	}

	// A version that changes beta's batch size changes beta's config and
	// not alpha's.
	q := policytest.MustParse(t, f.c.NextDocument(t, p, func(d *policy.Document) { d.Ledger.Channels[1].BatchSize.MaxMessageCount = 4 }))
	for _, x := range []struct {
		ch      string
		changed bool
	}{{"alpha", false}, {"beta", true}} {
		before, after := cfgOf(p, x.ch), cfgOf(q, x.ch)
		if changed := before.Batch != after.Batch; changed != x.changed {
			t.Errorf("channel %s: batch %+v -> %+v, changed %v, want %v", x.ch, before.Batch, after.Batch, changed, x.changed)
		}
	}
}

// TestNextFromPolicyPerChannel: a whole multi-channel policy version
// derives, from each channel's config block, the update of that channel:
// a change to beta's batch size is an update of beta and no change of
// alpha, and the admin signatures it needs are those of beta's orgs (a
// MAJORITY of two: both).
func TestNextFromPolicyPerChannel(t *testing.T) {
	f := newUpdateFixture(t)
	p := policytest.MustParse(t, f.c.NextDocument(t, f.genesis, func(d *policy.Document) {
		d.Ledger.Channel = ""
		d.Ledger.Channels = []*policy.Channel{
			{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}},
			{Name: "beta", Consenters: []string{"m2", "m3"}, Members: []string{"m2", "m3"}},
		}
	}))
	genesis := map[string]*common.Block{}
	for _, ch := range p.Channels() {
		v, _ := p.ForChannel(ch)
		cc, err := FromPolicy(v, f.tls)
		if err != nil {
			t.Fatal(err)
		}
		if genesis[ch], err = GenesisBlock(cc, time.Unix(1700000000, 0), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	q := policytest.MustParse(t, f.c.NextDocument(t, p, func(d *policy.Document) {
		d.Ledger.Channels[1].BatchSize = &policy.BatchSize{MaxMessageCount: 9, AbsoluteMaxBytes: 1 << 20, PreferredMaxBytes: 1 << 20}
	}))
	configOf := func(ch string) *common.Config {
		id, cfg, err := BlockConfig(genesis[ch])
		if err != nil || id != ch {
			t.Fatalf("%s genesis: %q %v", ch, id, err)
		}
		return cfg
	}
	if _, err := NextFromPolicy(configOf("alpha"), "alpha", q, nil); !errors.Is(err, ErrNoChange) {
		t.Fatalf("alpha: %v, want ErrNoChange", err)
	}
	u, err := NextFromPolicy(configOf("beta"), "beta", q, nil)
	if err != nil {
		t.Fatal(err)
	}
	if u.Config.Sequence != 1 {
		t.Fatalf("beta update to sequence %d", u.Config.Sequence)
	}
	if _, err := NextFromPolicy(configOf("beta"), "gamma", q, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("a channel the policy lacks: %v, want ErrConfig", err)
	}
	vc, err := CheckPolicyVersion(genesis["beta"], q)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(vc.Err, ErrUnderSigned) {
		t.Fatalf("beta's unsigned update: %v, want ErrUnderSigned", vc.Err)
	}
	// Beta's Admins policy is a MAJORITY of beta's two orgs: m2 and m3
	// meet it; m1, outside beta, does not count.
	in, err := ParseConfig("beta", configOf("beta"))
	if err != nil {
		t.Fatal(err)
	}
	sign := func(member string) *common.ConfigSignature { return f.signUpdate(t, u, member, AdminOU) }
	if err := in.CheckUpdateSigned(u, []*common.ConfigSignature{sign("m2"), sign("m3")}); err != nil {
		t.Fatalf("beta's update signed by m2 and m3: %v", err)
	}
	if err := in.CheckUpdateSigned(u, []*common.ConfigSignature{sign("m1"), sign("m2")}); !errors.Is(err, ErrUnderSigned) {
		t.Fatalf("beta's update signed by m1 and m2: %v, want ErrUnderSigned (m1 is not in beta)", err)
	}
}

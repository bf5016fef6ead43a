package consortium_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/push"
)

// addGamma is the version after L's genesis that adds channel gamma,
// of member-b and member-c and ordered by them, with their ledger TLS
// certificates in members[].ledger_consenter, signed by every member.
func addGamma(t *testing.T, L *demo.Layout) *policy.Policy {
	t.Helper()
	b, c := memberB, memberC
	certs := map[string]string{}
	for _, m := range []string{b, c} {
		raw, err := os.ReadFile(filepath.Join(L.Dir, "members", m, "identity", "cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		certs[m] = string(raw)
	}
	perTx := &policy.BatchSize{MaxMessageCount: 1, AbsoluteMaxBytes: 1 << 20, PreferredMaxBytes: 1 << 20}
	return nextPolicy(t, L, L.Genesis, func(doc *policy.Document) {
		doc.Ledger.Channels = append(doc.Ledger.Channels, &policy.Channel{Name: "gamma", Consenters: []string{b, c}, Members: []string{b, c}, BatchSize: perTx})
		for _, m := range doc.Members {
			if pemText, ok := certs[m.ID]; ok {
				m.LedgerConsenter = &policy.LedgerConsenter{TLSCert: pemText, Port: demo.LedgerPeerPort}
			}
		}
	}, L.Members...)
}

// channelStatusOf is channel ch's entry of member m's /status
// (ledger.channels), nil when m lists no such channel.
func channelStatusOf(t *testing.T, d *demo.Consortium, m, ch string) map[string]any {
	t.Helper()
	var st struct {
		Ledger struct {
			Channels []map[string]any `json:"channels"`
		} `json:"ledger"`
	}
	applianceStatus(t, d, m, &st)
	for _, c := range st.Ledger.Channels {
		if c["channel"] == ch {
			return c
		}
	}
	return nil
}

// checkGammaGenesis checks that member-b's and member-c's gamma start from
// the same genesis block, byte for byte: gamma's, with its 2 consenters.
func checkGammaGenesis(t *testing.T, d *demo.Consortium) {
	t.Helper()
	var genesis [][]byte
	for _, m := range []string{memberB, memberC} {
		n, err := d.LedgerChannelNode(m, "gamma")
		if err != nil {
			t.Fatal(err)
		}
		raw, err := n.Store().GetRaw(0)
		if err != nil {
			t.Fatal(err)
		}
		g, err := n.Store().Get(0)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := channelconfig.Parse(g)
		if err != nil {
			t.Fatal(err)
		}
		if ch.Config.ChannelID != "gamma" || len(ch.Config.Consenters) != 2 {
			t.Fatalf("%s: gamma's genesis is of channel %q with %d consenters", m, ch.Config.ChannelID, len(ch.Config.Consenters))
		}
		genesis = append(genesis, raw)
	}
	if !bytes.Equal(genesis[0], genesis[1]) {
		t.Fatal("gamma's genesis blocks differ between member-b and member-c")
	}
}

// TestChannelAddedWhileConsenterDown: member-c is stopped when the version
// adding gamma is pushed, so gamma has no quorum; member-c starts with
// that version in its policy folder, derives gamma's genesis block at its
// start (the version before, which added nothing, from its policy
// history) and gets the same block as member-b, which derived it live;
// gamma then orders.
func TestChannelAddedWhileConsenterDown(t *testing.T) {
	ctx, L, d := startTwoChannels(t)
	a, b, c := memberA, memberB, memberC
	if err := d.StopMember(c); err != nil {
		t.Fatal(err)
	}
	v2 := addGamma(t, L)
	res, err := d.PushPolicy(ctx, b, v2.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.OK && r.Member != c {
			t.Fatalf("push of v2 to %s: %s", r.Member, r.Detail)
		}
	}
	waitFor(t, 30*time.Second, "gamma opened on "+b, func() bool {
		_, err := d.LedgerChannelNode(b, "gamma")
		return err == nil
	})
	cfg, err := appliance.LoadConfig(L.MemberConfig[c])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := push.Store(cfg.Path(cfg.Policy.Dir), v2.Marshal()); err != nil {
		t.Fatal(err)
	}
	if err := d.StartMember(ctx, c); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "gamma with a leader on "+b+" and "+c, func() bool {
		for _, m := range []string{b, c} {
			n, err := d.LedgerChannelNode(m, "gamma")
			if err != nil || n.Healthy() != nil {
				return false
			}
		}
		return true
	})
	checkGammaGenesis(t, d)
	if _, err := d.LedgerSubmitTo(ctx, c, "gamma", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LedgerChannelNode(a, "gamma"); err == nil {
		t.Fatalf("%s opened gamma, which it does not order", a)
	}
}

// TestChannelAddedLive: on TestTwoChannels' consortium, running, a pushed
// policy version that adds channel gamma (ordered by member-b and
// member-c, who give their ledger TLS certificates in
// members[].ledger_consenter) opens gamma on both at once, from the same
// genesis block derived from the policy, byte for byte; gamma orders
// transactions submitted at either, without a restart, and member-a, which
// does not order it, does not open it. A next version that drops gamma
// halts it on both: /status says "dropped", submissions are refused, its
// blocks stay readable, and alpha and beta order on.
func TestChannelAddedLive(t *testing.T) {
	ctx, L, d := startTwoChannels(t)
	a, b, c := memberA, memberB, memberC
	v2 := addGamma(t, L)
	push := func(p *policy.Policy) {
		t.Helper()
		res, err := d.PushPolicy(ctx, b, p.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if !r.OK {
				t.Fatalf("push of v%d to %s: %s", p.Version(), r.Member, r.Detail)
			}
		}
	}
	push(v2)
	waitFor(t, 30*time.Second, "gamma open with a leader on "+b+" and "+c, func() bool {
		for _, m := range []string{b, c} {
			n, err := d.LedgerChannelNode(m, "gamma")
			if err != nil || n.Healthy() != nil {
				return false
			}
		}
		return true
	})
	if _, err := d.LedgerChannelNode(a, "gamma"); err == nil {
		t.Fatalf("%s opened gamma, which it does not order", a)
	}
	checkGammaGenesis(t, d)
	for _, m := range []string{b, c} {
		if _, err := d.LedgerSubmitTo(ctx, m, "gamma", 2); err != nil {
			t.Fatalf("submit to gamma at %s: %v", m, err)
		}
	}
	waitFor(t, 30*time.Second, "gamma at height 5 on both", func() bool {
		for _, m := range []string{b, c} {
			if n, err := d.LedgerChannelNode(m, "gamma"); err != nil || n.Height() != 5 {
				return false
			}
		}
		return true
	})
	if st := channelStatusOf(t, d, b, "gamma"); st == nil || st["state"] != "active" {
		t.Fatalf("/status of %s, gamma: %v", b, st)
	}

	// v3 drops gamma: it stops ordering, its blocks stay readable.
	v3 := nextPolicy(t, L, v2, func(doc *policy.Document) { doc.Ledger.Channels = doc.Ledger.Channels[:2] }, L.Members...)
	push(v3)
	waitFor(t, 30*time.Second, "gamma dropped on "+b+" and "+c, func() bool {
		for _, m := range []string{b, c} {
			if st := channelStatusOf(t, d, m, "gamma"); st == nil || st["dropped"] != true {
				return false
			}
		}
		return true
	})
	if _, err := d.LedgerSubmitTo(ctx, c, "gamma", 1); err == nil {
		t.Fatal("gamma took a transaction after v3 dropped it")
	}
	for _, m := range []string{b, c} {
		n, err := d.LedgerChannelNode(m, "gamma")
		if err != nil {
			t.Fatal(err)
		}
		if h := n.Height(); h != 5 {
			t.Fatalf("%s: gamma at height %d after the drop, want 5", m, h)
		}
		if _, err := n.Store().Get(4); err != nil {
			t.Fatalf("%s: gamma's block 4 after the drop: %v", m, err)
		}
	}
	if _, err := d.LedgerSubmitTo(ctx, b, "beta", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LedgerSubmitTo(ctx, a, "alpha", 1); err != nil {
		t.Fatal(err)
	}
}

package policy_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// twoChannels edits a document to serve alpha (every member, ordered by
// all three) and beta (m1 and m2 only, ordered by both, own batch size).
func twoChannels(d *policy.Document) {
	d.Ledger.Channel = ""
	d.Ledger.Channels = []*policy.Channel{
		{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}},
		{Name: "beta", Consenters: []string{"m2", "m1"}, Members: []string{"m1", "m2"},
			BatchSize: &policy.BatchSize{MaxMessageCount: 7, AbsoluteMaxBytes: 1 << 20, PreferredMaxBytes: 1 << 19}, BatchTimeout: "250ms"},
	}
}

func TestChannelViews(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	// Without ledger.channels, the one channel's view is the policy itself.
	if chs := g.Channels(); !slices.Equal(chs, []string{"trade"}) {
		t.Fatalf("single-channel Channels() = %v", chs)
	}
	if v, err := g.ForChannel("trade"); err != nil || v != g {
		t.Fatalf("ForChannel(trade) = %p, %v; want the policy itself", v, err)
	}
	if _, err := g.ForChannel("other"); !errors.Is(err, policy.ErrNoChannel) {
		t.Fatalf("ForChannel(other) err = %v, want ErrNoChannel", err)
	}

	p := c.Sign(t, c.Next(t, g, twoChannels), "m1", "m2")
	if chs := p.Channels(); !slices.Equal(chs, []string{"alpha", "beta"}) {
		t.Fatalf("Channels() = %v", chs)
	}
	alpha, err := p.ForChannel("alpha")
	if err != nil {
		t.Fatal(err)
	}
	beta, err := p.ForChannel("beta")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := p.ForChannel("beta"); again != beta {
		t.Fatal("a second ForChannel built a new view")
	}
	if v, _ := beta.ForChannel("beta"); v != beta || beta.Whole() != p || p.Whole() != p {
		t.Fatal("a view of a view is itself, and Whole leads back")
	}
	// A view is the same version, hash and signatures.
	if beta.Hash() != p.Hash() || beta.Version() != p.Version() || len(beta.Signatures()) != 2 {
		t.Fatalf("view: hash %s version %d, %d signatures", beta.Hash(), beta.Version(), len(beta.Signatures()))
	}
	al, bl := alpha.Ledger(), beta.Ledger()
	if al.Channel != "alpha" || len(alpha.Members()) != 3 || !slices.Equal(al.Consenters, []string{"m1", "m2", "m3"}) ||
		al.BatchSize != p.Ledger().BatchSize || al.Timeout != 2*time.Second {
		t.Fatalf("alpha view: %+v, %d members", al, len(alpha.Members()))
	}
	if bl.Channel != "beta" || len(beta.Members()) != 2 || beta.Member("m3") != nil || !slices.Equal(bl.Consenters, []string{"m2", "m1"}) ||
		bl.BatchSize.MaxMessageCount != 7 || bl.Timeout != 250*time.Millisecond {
		t.Fatalf("beta view: %+v, %d members", bl, len(beta.Members()))
	}
	if cs := beta.Consenters(); len(cs) != 2 || cs[0].ID != "m2" {
		t.Fatalf("beta consenters %v", cs)
	}
	// m3's certificate is a member's in the whole policy and in alpha, and
	// no member's in beta, with an error that names the channel.
	leaf := c.CAs["m3"].Issue(t, "m3 client").Cert
	if _, err := alpha.MemberForCertificate(chains(leaf)); err != nil {
		t.Fatalf("alpha refuses m3: %v", err)
	}
	_, err = beta.MemberForCertificate(chains(leaf))
	if !errors.Is(err, policy.ErrNotMember) || !strings.Contains(err.Error(), `channel "beta"`) {
		t.Fatalf("beta: m3's certificate: err = %v, want ErrNotMember naming the channel", err)
	}
	if got := p.ChannelConsenters("beta"); !slices.Equal(got, []string{"m2", "m1"}) {
		t.Fatalf("ChannelConsenters(beta) = %v", got)
	}
}

func TestChannelsRejected(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	cases := []struct {
		name string
		edit func(d *policy.Document)
		want string
	}{
		{"channel and channels", func(d *policy.Document) { twoChannels(d); d.Ledger.Channel = "trade" }, "ledger.channel: \"trade\" is given together with ledger.channels"},
		{"bad name", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[1].Name = "Beta" }, "ledger.channels[1].name: \"Beta\" is not a Fabric channel name"},
		{"duplicate name", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[1].Name = "alpha" }, "ledger.channels[1].name: channel \"alpha\" listed twice"},
		{"unknown member", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[1].Members = []string{"m1", "m9"} }, "ledger.channels[1].members: \"m9\" is not a member"},
		{"member twice", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[1].Members = []string{"m1", "m2", "m1"} }, "ledger.channels[1].members: \"m1\" listed twice"},
		{"no consenter", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[0].Consenters = nil }, "ledger.channels[0].consenters: channel \"alpha\" needs at least one consenter"},
		{"consenter outside members", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[1].Consenters = []string{"m3"} }, "ledger.channels[1].consenters: \"m3\" is not in the channel's members"},
		{"consenter not in ledger.consenters", func(d *policy.Document) {
			twoChannels(d)
			d.Members[2].Roles = []policy.Role{policy.RoleWriter}
			d.Ledger.Consenters = []string{"m1", "m2"}
		}, "ledger.channels[0].consenters: \"m3\" is not in ledger.consenters"},
		{"consenter twice", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[0].Consenters = []string{"m1", "m1"} }, "ledger.channels[0].consenters: \"m1\" listed twice"},
		{"bad batch size", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[1].BatchSize.MaxMessageCount = 0 }, "ledger.channels[1].batch_size.max_message_count: 0 is out of range"},
		{"bad timeout", func(d *policy.Document) { twoChannels(d); d.Ledger.Channels[1].BatchTimeout = "soon" }, "ledger.channels[1].batch_timeout: \"soon\" is not a duration"},
	}
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) {
			b := c.NextDocument(t, g, x.edit)
			_, err := policy.Parse(b)
			if !errors.Is(err, policy.ErrMalformed) || !strings.Contains(err.Error(), x.want) {
				t.Fatalf("err = %v, want ErrMalformed with %q", err, x.want)
			}
		})
	}
}

func TestDiffChannels(t *testing.T) {
	c := policytest.New(t, 3)
	v2 := c.Next(t, c.Genesis(t), twoChannels)
	v3 := c.Next(t, v2, func(d *policy.Document) {
		d.Ledger.Channels[0].Consenters = []string{"m1", "m2"}
		d.Ledger.Channels[1].BatchTimeout = "1s"
		d.Ledger.Channels = append(d.Ledger.Channels, &policy.Channel{Name: "gamma", Consenters: []string{"m3"}})
	})
	df := policy.Compare(v2, v3)
	if !df.Has(policy.KindLedgerChanged) || !df.Has(policy.KindConsentersChanged) {
		t.Fatalf("kinds %v, want ledger_changed and consenters_changed", df.Kinds)
	}
	s := df.String()
	for _, w := range []string{"~ ledger + channel gamma", "~ ledger channel beta: batch_timeout", "~ consenters of channel alpha: -m3"} {
		if !strings.Contains(s, w) {
			t.Errorf("diff text lacks %q:\n%s", w, s)
		}
	}
	back := policy.Compare(v3, v2).String()
	if !strings.Contains(back, "~ ledger - channel gamma") || !strings.Contains(back, "alpha: +m3") {
		t.Errorf("reverse diff:\n%s", back)
	}
	if s := policy.Compare(c.Genesis(t), v2).String(); !strings.Contains(s, "~ ledger channel") || !strings.Contains(s, "+ channel alpha") {
		t.Errorf("diff from a single channel:\n%s", s)
	}
}

func chains(leaf *x509.Certificate) [][]*x509.Certificate { return [][]*x509.Certificate{{leaf}} }

// TestDocsChannelsExample: the ledger.channels example of docs/policy.md,
// put in place of the complete example's ledger section, parses and means
// what the text says.
func TestDocsChannelsExample(t *testing.T) {
	b, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	yamlBlocks := bytes.Split(b, []byte("```yaml\n"))
	full, _, _ := bytes.Cut(yamlBlocks[1], []byte("```\n"))
	_, sect, ok := bytes.Cut(b, []byte("## Several channels"))
	if !ok {
		t.Fatal("no Several channels section")
	}
	_, snippet, _ := bytes.Cut(sect, []byte("```yaml\n"))
	snippet, _, _ = bytes.Cut(snippet, []byte("```\n"))
	start := bytes.Index(full, []byte("\nledger:\n"))
	end := bytes.Index(full, []byte("\nrevocations:\n"))
	if start < 0 || end < start {
		t.Fatal("the complete example has no ledger section before revocations")
	}
	doc := slices.Concat(full[:start+1], snippet, full[end:])
	p, err := policy.Parse(doc)
	if err != nil {
		t.Fatalf("docs example with ledger.channels: %v", err)
	}
	if !slices.Equal(p.Channels(), []string{"trade", "settlement"}) {
		t.Fatalf("channels %v", p.Channels())
	}
	s, _ := p.ForChannel("settlement")
	if s.Member("initech") != nil || s.Member("acme") == nil || !slices.Equal(s.Ledger().Consenters, []string{"globex"}) ||
		s.Ledger().BatchSize.MaxMessageCount != 10 || s.Ledger().Timeout != 500*time.Millisecond {
		t.Fatalf("settlement view: %+v", s.Ledger())
	}
	if tr, _ := p.ForChannel("trade"); len(tr.Members()) != 3 || tr.Ledger().BatchSize.MaxMessageCount != 500 {
		t.Fatalf("trade view: %+v", tr.Ledger())
	}
}

// TestRetain: a channel a version drops keeps its last ledger section and
// members, but follows the later version's revocations and members.
func TestRetain(t *testing.T) {
	c := policytest.New(t, 3)
	p := c.Next(t, c.Genesis(t), twoChannels, "m1", "m2")
	beta, err := p.ForChannel("beta")
	if err != nil {
		t.Fatal(err)
	}
	cert := c.CAs["m1"].Issue(t, "m1 client").Cert
	spki := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	next := c.Next(t, p, func(d *policy.Document) {
		d.Ledger.Channels = d.Ledger.Channels[:1] // beta dropped
		d.Revocations.Certificates = append(d.Revocations.Certificates, &policy.RevokedCert{SPKISHA256: hex.EncodeToString(spki[:])})
	}, "m1", "m2")
	if beta.Revoked("m1", cert) || !next.Revoked("m1", cert) {
		t.Fatal("test setup: the certificate must be revoked by next only")
	}
	r := next.Retain(beta)
	if !r.Revoked("m1", cert) {
		t.Error("the retained view ignores the later revocation")
	}
	if r.Ledger().Channel != "beta" || !slices.Equal(r.Ledger().Consenters, beta.Ledger().Consenters) || r.Ledger().BatchSize != beta.Ledger().BatchSize {
		t.Errorf("retained ledger section %+v, want beta's %+v", r.Ledger(), beta.Ledger())
	}
	var ids []string
	for _, m := range r.Members() {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, []string{"m1", "m2"}) {
		t.Errorf("retained members %v, want beta's m1, m2", ids)
	}
	if r.Whole() != next || r.Hash() != next.Hash() {
		t.Error("the retained view is a view of next")
	}
}

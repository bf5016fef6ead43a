package policy_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

var now = time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)

func describe(s string) func(d *policy.Document) {
	return func(d *policy.Document) { d.Description = s }
}

// TestQuorumMajority: the default rule is floor(n/2)+1 member votes, for
// 1..7 members and every number of signers.
func TestQuorumMajority(t *testing.T) {
	for n := 1; n <= 7; n++ {
		c := policytest.New(t, n)
		g := c.Genesis(t)
		for k := 0; k <= n; k++ {
			t.Run(fmt.Sprintf("n=%d/signers=%d", n, k), func(t *testing.T) {
				cand := c.Next(t, g, describe("x"), policytest.Members(n)[:k]...)
				r := policy.Check(g, cand, now)
				want := n/2 + 1
				if r.Needed != want {
					t.Fatalf("needed %d, want %d", r.Needed, want)
				}
				if ok := r.Err == nil; ok != (k >= want) {
					t.Fatalf("k=%d: err=%v, want ok=%v", k, r.Err, k >= want)
				}
				if len(r.Votes) != k || len(r.Missing) != n-k {
					t.Fatalf("votes %v missing %v", r.Votes, r.Missing)
				}
				if r.Err != nil && !errors.Is(r.Err, policy.ErrQuorum) {
					t.Fatalf("err %v is not ErrQuorum", r.Err)
				}
			})
		}
	}
}

// TestQuorumRules covers one vote per member, duplicates, revoked and
// expired keys, removed members and stricter per-kind rules.
func TestQuorumRules(t *testing.T) {
	type tc struct {
		name    string
		n       int
		setup   func(c *policytest.Consortium, d *policy.Document) // edits genesis template
		edit    func(c *policytest.Consortium, d *policy.Document) // the change
		sign    func(c *policytest.Consortium, p *policy.Policy) *policy.Policy
		needed  int
		ok      bool
		kinds   []policy.ChangeKind
		reason  string // substring of one rejection reason
		errText string // substring of the error
	}
	signA1 := func(ms ...string) func(c *policytest.Consortium, p *policy.Policy) *policy.Policy {
		return func(c *policytest.Consortium, p *policy.Policy) *policy.Policy { return c.Sign(t, p, ms...) }
	}
	secondAdmin := func(c *policytest.Consortium, d *policy.Document) {
		d.Members[0].Admins = append(d.Members[0].Admins, c.NewAdmin(t, "m1", "a2"))
	}
	meta := func(c *policytest.Consortium, d *policy.Document) { d.Description = "changed" }
	cases := []tc{
		{name: "two admins of one member are one vote", n: 3, setup: secondAdmin, edit: meta,
			sign: func(c *policytest.Consortium, p *policy.Policy) *policy.Policy {
				return c.SignAs(t, c.SignAs(t, p, "m1", "a1"), "m1", "a2")
			}, needed: 2, ok: false, reason: "already voted", errText: "needs 2 of 3 member votes"},
		{name: "two admins of one member plus another member", n: 3, setup: secondAdmin, edit: meta,
			sign: func(c *policytest.Consortium, p *policy.Policy) *policy.Policy {
				return c.Sign(t, c.SignAs(t, p, "m1", "a2"), "m2")
			}, needed: 2, ok: true},
		{name: "revoked admin key does not count", n: 3,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Members[1].Admins = append(d.Members[1].Admins, c.NewAdmin(t, "m2", "a2"))
				d.Revocations.AdminKeys = []*policy.AdminRef{{Member: "m2", KeyID: "a1"}}
			}, edit: meta, sign: signA1("m1", "m2"), needed: 2, ok: false, reason: "revoked"},
		{name: "key revoked by the candidate itself does not count", n: 3, edit: func(c *policytest.Consortium, d *policy.Document) {
			d.Revocations.AdminKeys = []*policy.AdminRef{{Member: "m2", KeyID: "a1"}}
		}, sign: signA1("m1", "m2"), needed: 2, ok: false, reason: "revoked by this version", kinds: []policy.ChangeKind{policy.KindRevocationsChanged}},
		{name: "expired admin key does not count", n: 3,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Members[1].Admins[0].NotAfter = now.Add(-time.Minute).Format(time.RFC3339)
			}, edit: meta, sign: signA1("m1", "m2"), needed: 2, ok: false, reason: "expired"},
		{name: "admin key not yet expired counts", n: 3,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Members[1].Admins[0].NotAfter = now.Add(time.Minute).Format(time.RFC3339)
			}, edit: meta, sign: signA1("m1", "m2"), needed: 2, ok: true},
		{name: "signer not a member", n: 3, edit: meta,
			sign: func(c *policytest.Consortium, p *policy.Policy) *policy.Policy {
				c.NewMember(t, "outsider")
				return c.Sign(t, p, "m1", "outsider")
			}, needed: 2, ok: false, reason: "outsider is not a member"},
		{name: "signer not an admin of its member", n: 3, edit: meta,
			sign: func(c *policytest.Consortium, p *policy.Policy) *policy.Policy {
				c.NewAdmin(t, "m2", "rogue")
				return c.SignAs(t, c.Sign(t, p, "m1"), "m2", "rogue")
			}, needed: 2, ok: false, reason: "rogue is not an admin key of member m2"},
		{name: "admin added in the candidate cannot vote for it", n: 3,
			edit: func(c *policytest.Consortium, d *policy.Document) {
				d.Members[1].Admins = append(d.Members[1].Admins, c.NewAdmin(t, "m2", "new"))
			},
			sign: func(c *policytest.Consortium, p *policy.Policy) *policy.Policy {
				return c.SignAs(t, c.Sign(t, p, "m1"), "m2", "new")
			}, needed: 2, ok: false, reason: "new is not an admin key", kinds: []policy.ChangeKind{policy.KindAdminsChanged}},
		{name: "stricter rule for admitting a member: under-signed", n: 3,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Amendment.Rules = map[policy.ChangeKind]policy.Threshold{policy.KindMemberAdded: policy.Unanimous()}
			},
			edit: func(c *policytest.Consortium, d *policy.Document) {
				d.Members = append(d.Members, c.NewMember(t, "m4"))
			}, sign: signA1("m1", "m2"), needed: 3, ok: false,
			kinds: []policy.ChangeKind{policy.KindMemberAdded}, errText: "rule member_added: unanimous"},
		{name: "stricter rule for admitting a member: enough", n: 3,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Amendment.Rules = map[policy.ChangeKind]policy.Threshold{policy.KindMemberAdded: policy.Unanimous()}
			},
			edit: func(c *policytest.Consortium, d *policy.Document) {
				d.Members = append(d.Members, c.NewMember(t, "m4"))
			}, sign: signA1("m1", "m2", "m3"), needed: 3, ok: true},
		{name: "stricter rule does not apply to other kinds", n: 3,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Amendment.Rules = map[policy.ChangeKind]policy.Threshold{policy.KindMemberAdded: policy.Unanimous()}
			}, edit: meta, sign: signA1("m1", "m2"), needed: 2, ok: true},
		{name: "fraction rule 2/3 of 7 for the ACL", n: 7,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Amendment.Rules = map[policy.ChangeKind]policy.Threshold{policy.KindACLChanged: policy.Fraction(2, 3)}
			},
			edit: func(c *policytest.Consortium, d *policy.Document) {
				d.ACL[0].Ports = append(d.ACL[0].Ports, policy.PortRange{Lo: 9000, Hi: 9000})
			}, sign: signA1("m1", "m2", "m3", "m4"), needed: 5, ok: false, kinds: []policy.ChangeKind{policy.KindACLChanged}},
		{name: "removing a member does not need its vote (unanimous rule)", n: 3,
			setup: func(c *policytest.Consortium, d *policy.Document) {
				d.Amendment.Default = policy.Unanimous()
			},
			edit:  removeMember("m3"),
			sign:  signA1("m1", "m2"),
			kinds: []policy.ChangeKind{policy.KindMemberRemoved, policy.KindACLChanged, policy.KindConsentersChanged}, needed: 2, ok: true},
		{name: "removed member's own vote still counts if given", n: 3, edit: removeMember("m3"),
			sign: signA1("m1", "m3"), needed: 2, ok: true},
		{name: "a minority cannot remove a majority", n: 5,
			edit: func(c *policytest.Consortium, d *policy.Document) {
				removeMember("m3")(c, d)
				removeMember("m4")(c, d)
				removeMember("m5")(c, d)
			}, sign: signA1("m1", "m2"), needed: 3, ok: false},
		{name: "no signatures at all", n: 1, edit: meta, sign: signA1(), needed: 1, ok: false, errText: "got 0 valid"},
	}
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) {
			c := policytest.New(t, x.n)
			if x.setup != nil {
				x.setup(c, c.Template)
			}
			g := c.Genesis(t)
			cand := policytest.MustParse(t, c.NextDocument(t, g, func(d *policy.Document) { x.edit(c, d) }))
			cand = x.sign(c, cand)
			r := policy.Check(g, cand, now)
			if r.Needed != x.needed {
				t.Errorf("needed %d, want %d", r.Needed, x.needed)
			}
			if (r.Err == nil) != x.ok {
				t.Fatalf("err = %v, want ok=%v", r.Err, x.ok)
			}
			if x.kinds != nil && fmt.Sprint(r.Diff.Kinds) != fmt.Sprint(x.kinds) {
				t.Errorf("kinds %v, want %v", r.Diff.Kinds, x.kinds)
			}
			if x.reason != "" && !strings.Contains(fmt.Sprint(r.Rejected), x.reason) {
				t.Errorf("rejections %v lack %q", r.Rejected, x.reason)
			}
			if x.errText != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), x.errText)) {
				t.Errorf("error %v lacks %q", r.Err, x.errText)
			}
			if r.Err != nil {
				var ve *policy.VerifyError
				if !errors.As(r.Err, &ve) || ve.Report != r {
					t.Errorf("error %T does not carry the report", r.Err)
				}
			}
		})
	}
}

func removeMember(id string) func(c *policytest.Consortium, d *policy.Document) {
	return func(c *policytest.Consortium, d *policy.Document) {
		var ms []*policy.Member
		for _, m := range d.Members {
			if m.ID != id {
				ms = append(ms, m)
			}
		}
		d.Members = ms
		var cs []string
		for _, x := range d.Ledger.Consenters {
			if x != id {
				cs = append(cs, x)
			}
		}
		d.Ledger.Consenters = cs
		d.ACL = append(d.ACL, &policy.ACLRule{From: []string{"role:writer"}, To: []string{"role:writer"}, Ports: []policy.PortRange{{Lo: 1, Hi: 1}}, Comment: "touch " + id})
	}
}

// TestVerifyFailsPrecisely: each broken candidate fails with its sentinel
// and a message that names the problem.
func TestVerifyFailsPrecisely(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	good := c.Next(t, g, describe("v2"), "m1", "m2")
	if _, err := policy.VerifyAt(g, good, now); err != nil {
		t.Fatalf("good candidate: %v", err)
	}
	other := policytest.MustParse(t, c.NextDocument(t, g, describe("other bytes")))

	cases := []struct {
		name string
		cand func() *policy.Policy
		cur  *policy.Policy
		want error
		text string
	}{
		{"wrong previous hash", func() *policy.Policy {
			return c.Next(t, g, func(d *policy.Document) { d.Previous = policy.HashDocument([]byte("x")).String() }, "m1", "m2")
		}, g, policy.ErrChain, "names previous sha256:"},
		{"version not greater (replay of current)", func() *policy.Policy { return good }, good, policy.ErrVersion, "not greater than the current version 2"},
		{"version equal with other content", func() *policy.Policy {
			return c.Next(t, g, func(d *policy.Document) { d.Version = 1; d.Previous = "" }, "m1", "m2")
		}, g, policy.ErrVersion, "rollback or replay"},
		{"forged signature", func() *policy.Policy {
			p := c.Sign(t, policytest.MustParse(t, good.DocumentBytes()), "m1")
			s := good.Signatures()[1]
			s.Sig = append([]byte(nil), s.Sig...)
			s.Sig[len(s.Sig)-3] ^= 0xff
			return p.WithSignature(s)
		}, g, policy.ErrQuorum, "m2/a1: signature does not verify"},
		{"signature over other bytes", func() *policy.Policy {
			p := c.Sign(t, policytest.MustParse(t, good.DocumentBytes()), "m1")
			return p.WithSignature(c.Sign(t, other, "m2").Signatures()[0])
		}, g, policy.ErrQuorum, "m2/a1: signature does not verify"},
		{"under-signed", func() *policy.Policy { return c.Sign(t, policytest.MustParse(t, good.DocumentBytes()), "m3") },
			g, policy.ErrQuorum, "needs 2 of 3 member votes under rule default: majority, got 1 valid (m3); missing: m1, m2"},
		{"signer not an admin", func() *policy.Policy {
			c.NewAdmin(t, "m1", "intruder")
			return c.SignAs(t, c.Sign(t, policytest.MustParse(t, good.DocumentBytes()), "m2"), "m1", "intruder")
		}, g, policy.ErrQuorum, "m1/intruder: intruder is not an admin key of member m1"},
		{"other consortium", func() *policy.Policy {
			return c.Next(t, g, func(d *policy.Document) { d.Consortium = "evil" }, "m1", "m2")
		}, g, policy.ErrChain, "consortium"},
	}
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) {
			_, err := policy.VerifyAt(x.cur, x.cand(), now)
			if !errors.Is(err, x.want) {
				t.Fatalf("err = %v, want %v", err, x.want)
			}
			if !strings.Contains(err.Error(), x.text) {
				t.Fatalf("error %q lacks %q", err, x.text)
			}
		})
	}
}

// TestVerifyChain: catch-up accepts v2..v4 only link by link.
func TestVerifyChain(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	v2 := c.Next(t, g, describe("v2"), "m1", "m2")
	// v3 admits m4 (majority of 3); v4 then needs a majority of 4 = 3.
	v3 := c.Next(t, v2, func(d *policy.Document) { d.Members = append(d.Members, c.NewMember(t, "m4")) }, "m2", "m3")
	v4 := c.Next(t, v3, describe("v4"), "m1", "m2", "m4")
	last, err := policy.VerifyChain(g, []*policy.Policy{v2, v3, v4}, now)
	if err != nil || last != v4 {
		t.Fatalf("chain: %v", err)
	}
	// Skipping a link breaks the chain.
	if _, err := policy.VerifyChain(g, []*policy.Policy{v2, v4}, now); !errors.Is(err, policy.ErrChain) {
		t.Fatalf("skipped link: %v", err)
	}
	// v4 signed by 2 of 4 is under-signed even though 2 of 3 was enough before.
	weak := c.Next(t, v3, describe("v4"), "m1", "m2")
	if _, err := policy.VerifyChain(g, []*policy.Policy{v2, v3, weak}, now); !errors.Is(err, policy.ErrQuorum) || !strings.Contains(err.Error(), "chain link version 4") {
		t.Fatalf("weak link: %v", err)
	}
}

func TestVerifyGenesis(t *testing.T) {
	c := policytest.New(t, 2)
	g := c.Genesis(t)
	if _, err := policy.VerifyGenesis(g, g.Hash()); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.VerifyGenesis(g, policy.HashDocument([]byte("other"))); !errors.Is(err, policy.ErrGenesis) {
		t.Fatalf("wrong pin: %v", err)
	}
	v2 := c.Next(t, g, nil, "m1", "m2")
	if _, err := policy.VerifyGenesis(v2, v2.Hash()); !errors.Is(err, policy.ErrGenesis) {
		t.Fatalf("version 2 as genesis: %v", err)
	}
}

// TestAdminKeyTypes: Ed25519 and RSA admin keys, and an admin given as a
// certificate whose expiry bounds the key.
func TestAdminKeyTypes(t *testing.T) {
	c := policytest.New(t, 3)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	c.Template.Members[0].Admins = []*policy.Admin{c.AddAdminKey(t, "m1", "ed", edKey)}
	c.Template.Members[1].Admins = []*policy.Admin{c.AddAdminKey(t, "m2", "rsa", rsaKey)}
	// m3's admin is a certificate issued by its CA (valid 30 days).
	admin := c.CAs["m3"].Issue(t, "admin.m3")
	a := c.AddAdminKey(t, "m3", "cert", admin.Key)
	a.PublicKey, a.Certificate = "", pemOf(admin.Cert)
	c.Template.Members[2].Admins = []*policy.Admin{a}
	g := c.Genesis(t)
	if got := g.Admin(policy.AdminRef{Member: "m3", KeyID: "cert"}).Expires; !got.Equal(admin.Cert.NotAfter) {
		t.Fatalf("certificate admin expires %v, want %v", got, admin.Cert.NotAfter)
	}

	cand := policytest.MustParse(t, c.NextDocument(t, g, describe("x")))
	cand = c.SignAs(t, c.SignAs(t, c.SignAs(t, cand, "m1", "ed"), "m2", "rsa"), "m3", "cert")
	r := policy.Check(g, cand, now)
	if r.Err != nil || len(r.Votes) != 3 {
		t.Fatalf("votes %v: %v", r.Votes, r.Err)
	}
	// After the certificate expires, m3's vote no longer counts.
	r = policy.Check(g, cand, admin.Cert.NotAfter.Add(time.Second))
	if len(r.Votes) != 2 || !strings.Contains(fmt.Sprint(r.Rejected), "m3/cert: admin key expired") {
		t.Fatalf("after expiry: votes %v rejected %v", r.Votes, r.Rejected)
	}
	// Weak RSA keys are refused at parse time.
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	c.Template.Members[1].Admins = []*policy.Admin{c.AddAdminKey(t, "m2", "weak", weak)}
	if _, err := policy.Parse(policytest.Render(t, c.Template)); !errors.Is(err, policy.ErrMalformed) || !strings.Contains(err.Error(), "2048") {
		t.Fatalf("weak RSA key: %v", err)
	}
}

// TestSignChecksKey: Policy.Sign refuses a key that is not the named admin's.
func TestSignChecksKey(t *testing.T) {
	c := policytest.New(t, 2)
	g := c.Genesis(t)
	cand := policytest.MustParse(t, c.NextDocument(t, g, describe("x")))
	if _, err := cand.Sign(c.Key("m2", "a1"), policy.AdminRef{Member: "m1", KeyID: "a1"}); !errors.Is(err, policy.ErrUnknownAdmin) {
		t.Fatalf("wrong key: %v", err)
	}
	s, err := cand.Sign(c.Key("m1", "a1"), policy.AdminRef{Member: "m1", KeyID: "a1"})
	if err != nil || len(s.Signatures()) != 1 || len(cand.Signatures()) != 0 {
		t.Fatalf("sign: %v", err)
	}
	if ref, ok := g.AdminFor(c.Key("m2", "a1").Public()); !ok || ref.Member != "m2" {
		t.Fatalf("AdminFor: %v %v", ref, ok)
	}
}

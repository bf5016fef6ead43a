package policy_test

import (
	"bytes"
	"testing"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// FuzzParse: the bundle and YAML parser never panics, stays within its
// limits, and what it accepts re-marshals to the same bytes.
func FuzzParse(f *testing.F) {
	c := policytest.New(f, 2)
	g := c.Genesis(f)
	f.Add(g.Marshal())
	f.Add(c.Sign(f, g, "m1", "m2").Marshal())
	f.Add(c.Next(f, g, func(d *policy.Document) {
		d.Amendment.Rules = map[policy.ChangeKind]policy.Threshold{policy.KindMemberAdded: policy.Fraction(2, 3)}
	}, "m1").Marshal())
	tlsCert := c.CAs["m1"].Issue(f, "m1 tls").Cert
	f.Add(c.Next(f, g, func(d *policy.Document) {
		d.Members[0].LedgerConsenter = &policy.LedgerConsenter{TLSCert: pemOf(tlsCert), Port: 7053}
	}, "m1", "m2").Marshal())
	revoked := c.CAs["m2"].Issue(f, "lost").Cert
	f.Add(c.Next(f, g, func(d *policy.Document) { d.Members[1].CRLs = c.CAs["m2"].CRL(f, 1, revoked) }, "m1", "m2").Marshal())
	f.Add([]byte("format: memberd-policy/v1\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n"))
	f.Add([]byte("#--- memberd signatures v1 ---\n#sig m1 a1 AAAA\n"))
	f.Add([]byte("x: 1\n#--- memberd signatures v1 ---\n#sig m1 a1 AAAA\n"))
	f.Add([]byte("x: 1\n#--- memberd signatures v1 ---\n#cfgsig m1 a1 AAAA\n#sig m1 a1 AAAA\n"))
	f.Add(c.Sign(f, g, "m1").WithConfigSignature(policy.ConfigSignature{Member: "m1", KeyID: "a1", Raw: []byte{1, 2}}).Marshal())
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := policy.Parse(data)
		if err != nil {
			return
		}
		out := p.Marshal()
		if len(p.Signatures()) > 0 && !bytes.Equal(out, data) {
			t.Fatalf("re-marshal differs:\n%q\n%q", data, out)
		}
		q, err := policy.Parse(out)
		if err != nil || q.Hash() != p.Hash() {
			t.Fatalf("re-parse: %v", err)
		}
		if !policy.Compare(p, q).Empty() {
			t.Fatal("diff of identical documents is not empty")
		}
		_ = policy.Check(p, q, now)
		_ = policy.Check(g, p, now)
	})
}

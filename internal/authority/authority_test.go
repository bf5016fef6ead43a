package authority_test

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/authority"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
	"github.com/memberd/memberd/relay"
)

func TestPolicyAuthorityAdapters(t *testing.T) {
	c := policytest.New(t, 3)
	leaf1 := c.CAs["m1"].Issue(t, "node.m1").Cert
	old := c.CAs["m2"].Issue(t, "old.m2").Cert
	c.Template.Revocations.Certificates = []*policy.RevokedCert{{Member: "m2", Serial: old.SerialNumber.String()}}
	c.Template.Members[2].Roles = []policy.Role{policy.RoleObserver}
	c.Template.Ledger.Consenters = []string{"m1", "m2"}
	c.Template.ACL = []*policy.ACLRule{{From: []string{"m1"}, To: []string{"m2"}, Ports: []policy.PortRange{{Lo: 7050, Hi: 7050}}}}
	c.Template.Relays[1].SPKISHA256 = ""
	c.Template.Relays[1].CACerts = c.CAs["m1"].PEM
	p := c.Genesis(t)

	ra := authority.Relay(p)
	if m, err := ra.MemberForCert([]*x509.Certificate{leaf1}, time.Now()); err != nil || m != "m1" {
		t.Fatalf("MemberForCert: %q %v", m, err)
	}
	if _, err := ra.MemberForCert([]*x509.Certificate{old}, time.Now()); !errors.Is(err, relay.ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	stranger := testpki.NewCA(t, "x").Issue(t, "x").Cert
	if _, err := ra.MemberForCert([]*x509.Certificate{stranger}, time.Now()); !errors.Is(err, relay.ErrNotMember) || errors.Is(err, relay.ErrRevoked) {
		t.Fatalf("stranger: %v", err)
	}
	if !ra.Allowed("m2", "m1") || ra.Allowed("m1", "m3") {
		t.Fatal("relay Allowed")
	}
	rs := ra.Relays()
	if len(rs) != 1 || rs[0].ID != "r1" || rs[0].Validate() != nil {
		t.Fatalf("relays %+v", rs)
	}

	ta := authority.Tunnel(p)
	if ms := ta.Members(); len(ms) != 3 || ms[1].ID != "m2" || ms[1].Addr != p.Member("m2").Addr {
		t.Fatalf("members %+v", ms)
	}
	if err := ta.VerifyMemberCert("m1", []*x509.Certificate{leaf1}); err != nil {
		t.Fatal(err)
	}
	if err := ta.VerifyMemberCert("m3", []*x509.Certificate{leaf1}); err == nil {
		t.Fatal("m1's certificate accepted as m3")
	}
	if !ta.Allowed("m1", "m2", 7050) || ta.Allowed("m2", "m1", 7050) || ta.Allowed("m1", "m2", 7051) {
		t.Fatal("tunnel Allowed")
	}
}

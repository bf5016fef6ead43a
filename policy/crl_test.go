package policy_test

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestCRLRevokes: a certificate listed in the CRL of the member CA that
// issued it is refused like one listed in revocations.certificates, and
// adding the CRL is a member change and a revocation in the diff.
func TestCRLRevokes(t *testing.T) {
	c := policytest.New(t, 2)
	ca1 := c.CAs["m1"]
	good := ca1.Issue(t, "good.m1").Cert
	bad := ca1.Issue(t, "bad.m1").Cert
	other := c.CAs["m2"].Issue(t, "node.m2").Cert
	g := c.Genesis(t)
	if _, err := g.MemberForCertificate([][]*x509.Certificate{{bad}}); err != nil {
		t.Fatalf("before the CRL: %v", err)
	}
	crl := ca1.CRL(t, 1, bad)
	v2 := c.Next(t, g, func(d *policy.Document) { d.Members[0].CRLs = crl })
	if n := len(v2.Member("m1").CRL); n != 1 || v2.Member("m1").CRL[0].CA != v2.Member("m1").CA[0] {
		t.Fatalf("m1 parsed %d CRLs: %+v", n, v2.Member("m1").CRL)
	}
	if _, err := v2.MemberForCertificate([][]*x509.Certificate{{bad}}); !errors.Is(err, policy.ErrNotMember) || !errors.Is(err, policy.ErrRevoked) {
		t.Fatalf("revoked by CRL: %v", err)
	}
	if err := v2.VerifyMemberCertificate("m1", []*x509.Certificate{bad}, time.Now()); !errors.Is(err, policy.ErrRevoked) {
		t.Fatalf("VerifyMemberCertificate of a CRL-revoked certificate: %v", err)
	}
	for _, ok := range []*x509.Certificate{good, other} {
		if _, err := v2.MemberForCertificate([][]*x509.Certificate{{ok}}); err != nil {
			t.Fatalf("%s: %v", ok.Subject, err)
		}
	}
	// The CRL applies to its own CA's certificates only: m2's CA issues a
	// certificate with the revoked serial, which stays valid.
	twin := issueSerial(t, c.CAs["m2"], bad.SerialNumber)
	if _, err := v2.MemberForCertificate([][]*x509.Certificate{{twin}}); err != nil {
		t.Fatalf("m2 certificate with the serial m1's CRL revokes: %v", err)
	}
	df := policy.Compare(g, v2)
	if !df.Has(policy.KindMemberChanged) || !df.Has(policy.KindRevocationsChanged) {
		t.Fatalf("kinds %v, want member_changed and revocations_changed", df.Kinds)
	}
	if s := df.String(); !strings.Contains(s, "~ member m1: crls") || !strings.Contains(s, "serial "+bad.SerialNumber.String()) {
		t.Fatalf("diff text:\n%s", s)
	}
	// The document round-trips with the CRL.
	if again := policytest.MustParse(t, v2.DocumentBytes()); again.Member("m1").CRLs != crl {
		t.Fatal("crls did not round-trip")
	}
	// Dropping the CRL reinstates the certificate.
	v3 := c.Next(t, v2, func(d *policy.Document) { d.Members[0].CRLs = "" })
	if _, err := v3.MemberForCertificate([][]*x509.Certificate{{bad}}); err != nil {
		t.Fatalf("after the CRL is dropped: %v", err)
	}
}

func issueSerial(t *testing.T, ca *testpki.CA, serial *big.Int) *x509.Certificate {
	t.Helper()
	leaf := ca.Issue(t, "twin")
	tmpl := *leaf.Cert
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.Cert, leaf.Key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestParseRejectsCRL(t *testing.T) {
	c := policytest.New(t, 2)
	ca1 := c.CAs["m1"]
	leaf := ca1.Issue(t, "leaf").Cert
	// A CRL signed with m1's CA key whose authority key identifier is not
	// the CA's subject key identifier: Fabric would never match it.
	fake := *ca1.Cert
	fake.SubjectKeyId = []byte{1, 2, 3, 4}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1),
		ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, &fake, ca1.Key)
	if err != nil {
		t.Fatal(err)
	}
	wrongAKI := string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
	cases := []struct {
		name, crls, want string
	}{
		{"signed by another member's CA", c.CAs["m2"].CRL(t, 1, leaf), "members[0] (m1).crls[0] (issuer \"CN=m2 CA\"): not signed by any of the member's ca_certs"},
		{"signed by an outsider", testpki.NewCA(t, "outsider CA").CRL(t, 1), "not signed by any of the member's ca_certs"},
		{"authority key identifier mismatch", wrongAKI, "members[0] (m1).crls[0] (issuer \"CN=m1 CA\"): authority key identifier 01020304 is not the subject key identifier"},
		{"two CRLs of one CA", ca1.CRL(t, 1) + ca1.CRL(t, 2, leaf), "members[0] (m1).crls[1]: CA \"CN=m1 CA\" already has crls[0]; list only the newest CRL of each CA"},
		{"a certificate, not a CRL", ca1.PEM, "members[0] (m1).crls[0]: a PEM \"CERTIFICATE\" block; want \"X509 CRL\""},
		{"not DER", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "members[0] (m1).crls[0]: not an X.509 CRL"},
		{"trailing text", ca1.CRL(t, 1) + "junk\n", "members[0] (m1).crls: text that is not PEM after the CRLs"},
	}
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) {
			c.Template.Members[0].CRLs = x.crls
			_, err := policy.Parse(policytest.Render(t, c.Template))
			if !errors.Is(err, policy.ErrMalformed) || !strings.Contains(err.Error(), x.want) {
				t.Fatalf("err = %v, want ErrMalformed with %q", err, x.want)
			}
		})
	}
	c.Template.Members[0].CRLs = ca1.CRL(t, 1, leaf)
	if _, err := policy.Parse(policytest.Render(t, c.Template)); err != nil {
		t.Fatalf("a good CRL: %v", err)
	}
}

// TestOpenSSLCRLs: CRLs made by 'openssl ca -gencrl' as docs/policy.md
// tells are accepted, and one made without the authority key identifier
// extension is refused with the fix (testdata/crl/README.md).
func TestOpenSSLCRLs(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile("testdata/crl/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	c := policytest.New(t, 2)
	c.Template.Members[0].CACerts = read("ca.pem")
	c.Template.Members[0].CRLs = read("openssl-gencrl.pem")
	p := c.Genesis(t)
	crl := p.Member("m1").CRL
	want, _ := new(big.Int).SetString("585967BC34D5971D1EE5DE155DFEFDAC", 16)
	if len(crl) != 1 || len(crl[0].List.RevokedCertificateEntries) != 1 || crl[0].List.RevokedCertificateEntries[0].SerialNumber.Cmp(want) != 0 {
		t.Fatalf("openssl CRL parsed as %+v", crl)
	}
	c.Template.Members[0].CRLs = read("openssl-no-akid.pem")
	_, err := policy.Parse(policytest.Render(t, c.Template))
	if !errors.Is(err, policy.ErrMalformed) || !strings.Contains(err.Error(), "members[0] (m1).crls[0] (issuer \"CN=member-a demo CA,O=member-a\"): no authority key identifier") ||
		!strings.Contains(err.Error(), "authorityKeyIdentifier = keyid:always") {
		t.Fatalf("CRL without authority key identifier: %v", err)
	}
	t.Log(err)
}

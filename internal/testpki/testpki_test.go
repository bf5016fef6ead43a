package testpki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
)

func TestIssueChainsToItsCA(t *testing.T) {
	ca, other := testpki.NewCA(t, "m1 CA"), testpki.NewCA(t, "m2 CA")
	leaf := ca.Issue(t, "node.m1")
	opts := x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := leaf.Cert.Verify(opts); err != nil {
		t.Fatalf("leaf does not verify against its CA: %v", err)
	}
	opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	if _, err := leaf.Cert.Verify(opts); err != nil {
		t.Fatalf("leaf is not good for TLS servers: %v", err)
	}
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: other.Pool()}); err == nil {
		t.Fatal("leaf verifies against another CA")
	}
	if leaf.Cert.Subject.CommonName != "node.m1" || len(leaf.Cert.DNSNames) != 0 || len(leaf.Cert.Subject.OrganizationalUnit) != 0 {
		t.Fatalf("default leaf: subject %v, DNS names %v", leaf.Cert.Subject, leaf.Cert.DNSNames)
	}
	if d := leaf.Cert.NotAfter.Sub(leaf.Cert.NotBefore); d < 30*24*time.Hour {
		t.Fatalf("default leaf valid for %v, want 30 days and more", d)
	}
	b, _ := pem.Decode([]byte(ca.PEM))
	if b == nil || !bytes.Equal(b.Bytes, ca.Cert.Raw) {
		t.Fatal("CA PEM is not its certificate")
	}
}

func TestIssueOptions(t *testing.T) {
	ca := testpki.NewCA(t, "m1 CA")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour)
	leaf := ca.Issue(t, "admin.m1", testpki.OU("admin"), testpki.DNS("admin.m1"), testpki.Key(key),
		testpki.Valid(past.Add(-time.Hour), past))
	if !slices.Equal(leaf.Cert.Subject.OrganizationalUnit, []string{"admin"}) {
		t.Errorf("OU = %v, want [admin]", leaf.Cert.Subject.OrganizationalUnit)
	}
	if !slices.Equal(leaf.Cert.DNSNames, []string{"admin.m1"}) {
		t.Errorf("DNS names = %v", leaf.Cert.DNSNames)
	}
	if !key.PublicKey.Equal(leaf.Cert.PublicKey) || leaf.Key != key || leaf.ECDSA(t) != key {
		t.Error("Key: the certificate is not for the given key")
	}
	var inv x509.CertificateInvalidError
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool()}); !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Errorf("Valid in the past: verify = %v, want expired", err)
	}
	signer, chain := leaf.Identity()
	tc := leaf.TLS()
	if signer != key || len(chain) != 1 || chain[0] != leaf.Cert || tc.Leaf != leaf.Cert || tc.PrivateKey != key ||
		len(tc.Certificate) != 1 || !bytes.Equal(tc.Certificate[0], leaf.Cert.Raw) {
		t.Error("Identity or TLS do not hold the leaf and its key")
	}
}

func TestSelfSigned(t *testing.T) {
	s := testpki.SelfSigned(t, "relay-1")
	if err := s.Cert.CheckSignature(s.Cert.SignatureAlgorithm, s.Cert.RawTBSCertificate, s.Cert.Signature); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}
	if s.Cert.IsCA || s.Cert.Subject.String() != s.Cert.Issuer.String() {
		t.Fatalf("self-signed leaf: IsCA %v, subject %v, issuer %v", s.Cert.IsCA, s.Cert.Subject, s.Cert.Issuer)
	}
	if _, err := s.Cert.Verify(x509.VerifyOptions{Roots: testpki.NewCA(t, "m1 CA").Pool()}); err == nil {
		t.Fatal("a self-signed certificate verifies against a member CA")
	}
}

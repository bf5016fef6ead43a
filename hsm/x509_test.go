package hsm_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testenv"
)

func TestCSRVerifiesWithOpenSSL(t *testing.T) {
	openssl := testenv.Command(t, "openssl", "openssl")
	tok := hsmtest.NewToken(t, "member-a")
	s := tok.NewKey(t, "tls")
	der, err := hsm.CreateCSR(s, hsm.CSRRequest{Subject: pkix.Name{CommonName: "node1.member-a", Organization: []string{"Member A"}}, DNSNames: []string{"node1.member-a"}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "csr.pem")
	if err := os.WriteFile(path, hsm.EncodePEM("CERTIFICATE REQUEST", der), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "req", "-verify", "-noout", "-in", path).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
	if !strings.Contains(strings.ToLower(string(out)), "verify ok") {
		t.Fatalf("openssl req -verify said: %s", out)
	}
	if _, err := hsm.CreateCSR(s, hsm.CSRRequest{}); err == nil {
		t.Fatal("CSR without CN accepted")
	}
}

func TestCAInitAndSign(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	caKey := tok.NewKey(t, "ca")
	leafKey := tok.NewKey(t, "tls")
	now := time.Now()
	ca, err := hsm.NewCACertificate(caKey, hsm.CAConfig{Subject: pkix.Name{CommonName: "Member A CA"}, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := hsm.CreateCSR(leafKey, hsm.CSRRequest{Subject: pkix.Name{CommonName: "node1", OrganizationalUnit: []string{"orderer"}},
		DNSNames: []string{"node1.member-a"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.ParseIP("100.64.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := hsm.SignCSR(ca, caKey, csr, hsm.LeafConfig{Now: now, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}, DNSName: "node1.member-a"}); err != nil {
			t.Fatalf("leaf does not verify for %v: %v", u, err)
		}
	}
	// The subject's OU (the Fabric NodeOU role) and every SAN survive signing.
	if ou := leaf.Subject.OrganizationalUnit; len(ou) != 1 || ou[0] != "orderer" {
		t.Fatalf("leaf OUs %q, want [orderer]", ou)
	}
	for _, ip := range []string{"127.0.0.1", "100.64.0.1"} {
		if err := leaf.VerifyHostname(ip); err != nil {
			t.Fatalf("leaf lost IP SAN %s: %v", ip, err)
		}
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.IsCA {
		t.Fatalf("leaf usages wrong: %v IsCA=%v", leaf.KeyUsage, leaf.IsCA)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(leafKey.Public()) {
		t.Fatal("leaf certifies another key")
	}
	// The CA key must match the CA certificate.
	if _, err := hsm.SignCSR(ca, leafKey, csr, hsm.LeafConfig{Now: now}); err == nil {
		t.Fatal("signing with a key that is not the CA's accepted")
	}
	// A tampered CSR is refused.
	bad := append([]byte{}, csr...)
	bad[len(bad)-5] ^= 0xff
	if _, err := hsm.SignCSR(ca, caKey, bad, hsm.LeafConfig{Now: now}); err == nil {
		t.Fatal("tampered CSR accepted")
	}
}

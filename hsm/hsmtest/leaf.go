package hsmtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm"
)

// IssueLeaf issues a certificate with OU ou (and IP SANs) for a new P-256
// key, signed by the CA, through the same CSR path as 'hsm csr' and 'ca sign'.
func IssueLeaf(t testing.TB, ca *x509.Certificate, caKey crypto.Signer, cn, ou string, ips ...net.IP) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := hsm.CreateCSR(k, hsm.CSRRequest{Subject: pkix.Name{CommonName: cn, OrganizationalUnit: []string{ou}}, IPs: ips})
	if err != nil {
		t.Fatal(err)
	}
	c, err := hsm.SignCSR(ca, caKey, csr, hsm.LeafConfig{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

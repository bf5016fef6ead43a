// Package testpki is memberd's one test PKI: member CAs and the
// certificates they issue (appliance identities, TLS certificates, Fabric
// NodeOU roles such as OU=admin, expired ones), and self-signed
// certificates such as a relay presents. Keys are ECDSA P-256 software
// keys, a fine fake of an HSM key at the crypto.Signer seam; a test that
// holds a real HSM key certifies it with the Key option. Test use only.
//
// Defaults: a CA is valid from an hour ago for a year, a leaf from an hour
// ago for 30 days; a leaf has digital-signature key usage, client and
// server authentication extended key usage, no subject alternative names
// unless DNS asks for them, and its subject is CommonName (plus OU).
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a certificate authority, as a member CA is.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is Cert in PEM, as a policy lists a member's CA certificates.
	PEM string
}

// Leaf is a certificate and its private key.
type Leaf struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// TLS returns the leaf as a tls.Certificate (chain of one, Leaf parsed).
func (l *Leaf) TLS() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
}

// Chain returns the leaf as a chain of one, the CA being pinned by
// whoever verifies it.
func (l *Leaf) Chain() []*x509.Certificate { return []*x509.Certificate{l.Cert} }

// Identity returns the leaf as a signer and a chain of one: an appliance
// identity as tunnel.Config and the ledger node take it.
func (l *Leaf) Identity() (crypto.Signer, []*x509.Certificate) { return l.Key, l.Chain() }

// ECDSA returns the leaf's key as an ECDSA private key; it fails the test
// when the key is something else (a key given with the Key option).
func (l *Leaf) ECDSA(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, ok := l.Key.(*ecdsa.PrivateKey)
	if !ok {
		tb.Fatalf("testpki: leaf %q key is a %T, not an ECDSA private key", l.Cert.Subject.CommonName, l.Key)
	}
	return k
}

// Option changes a certificate from the defaults.
type Option func(*x509.Certificate, *crypto.Signer)

// OU sets the subject's organizational units: the Fabric NodeOU role
// ("admin", "orderer", "peer", "client").
func OU(ous ...string) Option {
	return func(c *x509.Certificate, _ *crypto.Signer) { c.Subject.OrganizationalUnit = ous }
}

// DNS sets DNS subject alternative names.
func DNS(names ...string) Option {
	return func(c *x509.Certificate, _ *crypto.Signer) { c.DNSNames = names }
}

// Valid sets the validity period, for example one in the past for an
// expired certificate.
func Valid(notBefore, notAfter time.Time) Option {
	return func(c *x509.Certificate, _ *crypto.Signer) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// Key certifies key (an HSM-held crypto.Signer, or a key the test already
// has) instead of a fresh one.
func Key(key crypto.Signer) Option {
	return func(_ *x509.Certificate, k *crypto.Signer) { *k = key }
}

var serial atomic.Int64

func init() { serial.Store(time.Now().UnixNano()) }

func nextSerial() *big.Int { return big.NewInt(serial.Add(1)) }

// SetSerial makes the next certificate's serial number n+1. The serials
// start from the wall clock; a test that must make the same certificates
// on every run (test/sim, from its seed) sets them first.
func SetSerial(n int64) { serial.Store(n) }

// NewCA makes a self-signed CA named cn.
func NewCA(tb testing.TB, cn string) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	cert := create(tb, tmpl, tmpl, key.Public(), key)
	return &CA{Cert: cert, Key: key, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))}
}

// CRL returns a PEM X.509 CRL ("X509 CRL"), number n, signed by the CA and
// naming it by authority key identifier, that revokes the given
// certificates (valid for a week).
func (ca *CA) CRL(tb testing.TB, n int64, revoked ...*x509.Certificate) string {
	tb.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(n), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(7 * 24 * time.Hour)}
	for _, c := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
}

// Pool returns a pool holding only the CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue makes a leaf certificate for cn signed by the CA.
func (ca *CA) Issue(tb testing.TB, cn string, opts ...Option) *Leaf {
	tb.Helper()
	tmpl, key := leafTemplate(tb, cn, opts)
	return &Leaf{Cert: create(tb, tmpl, ca.Cert, key.Public(), ca.Key), Key: key}
}

// SelfSigned makes a self-signed leaf certificate for cn, which no member
// CA vouches for: what a relay presents (relays are authenticated by the
// pin of their key in the policy), or a stranger.
func SelfSigned(tb testing.TB, cn string, opts ...Option) *Leaf {
	tb.Helper()
	tmpl, key := leafTemplate(tb, cn, opts)
	return &Leaf{Cert: create(tb, tmpl, tmpl, key.Public(), key), Key: key}
}

func leafTemplate(tb testing.TB, cn string, opts []Option) (*x509.Certificate, crypto.Signer) {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	var key crypto.Signer
	for _, o := range opts {
		o(tmpl, &key)
	}
	if key == nil {
		key = newKey(tb)
	}
	return tmpl, key
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func create(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

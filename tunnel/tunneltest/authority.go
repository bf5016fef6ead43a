package tunneltest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// CA is a test member CA (software ECDSA P-256 key).
type CA struct {
	Member string
	Cert   *x509.Certificate
	Key    *ecdsa.PrivateKey
}

var serial atomic.Int64

// NewCA makes a self-signed CA for member, valid for a day.
func NewCA(t testing.TB, member string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: member + " test CA", Organization: []string{member}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Member: member, Cert: cert, Key: key}
}

// Issue certifies pub as an appliance identity of the CA's member, valid
// from notBefore to notAfter. The chain returned is leaf only (the CA is
// pinned by the Authority).
func (ca *CA) Issue(t testing.TB, pub crypto.PublicKey, notBefore, notAfter time.Time) []*x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: ca.Member + " appliance", Organization: []string{ca.Member}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{cert}
}

// NewIdentity makes a software ECDSA identity key and a certificate from ca
// valid for a day.
func (ca *CA) NewIdentity(t testing.TB) (crypto.Signer, []*x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key, ca.Issue(t, &key.PublicKey, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
}

// Authority is an immutable test policy snapshot.
type Authority struct {
	members []tunnel.Member
	cas     map[string]*x509.CertPool
	acl     func(from, to string, port uint16) bool
}

var _ tunnel.Authority = (*Authority)(nil)

// MemberSpec describes one member of a test Authority.
type MemberSpec struct {
	ID   string
	Addr netip.Addr
	CA   *CA
}

// NewAuthority builds a snapshot. acl nil allows everything.
func NewAuthority(members []MemberSpec, acl func(from, to string, port uint16) bool) *Authority {
	a := &Authority{cas: map[string]*x509.CertPool{}, acl: acl}
	for _, m := range members {
		a.members = append(a.members, tunnel.Member{ID: m.ID, Addr: m.Addr})
		p := x509.NewCertPool()
		if m.CA != nil {
			p.AddCert(m.CA.Cert)
		}
		a.cas[m.ID] = p
	}
	return a
}

// Members implements tunnel.Authority.
func (a *Authority) Members() []tunnel.Member { return append([]tunnel.Member(nil), a.members...) }

// VerifyMemberCert implements tunnel.Authority with x509 path validation
// against the member's pinned CA.
func (a *Authority) VerifyMemberCert(member string, chain []*x509.Certificate) error {
	pool, ok := a.cas[member]
	if !ok {
		return fmt.Errorf("%s is not a member", member)
	}
	if len(chain) == 0 {
		return errors.New("empty chain")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// Allowed implements tunnel.Authority.
func (a *Authority) Allowed(from, to string, port uint16) bool {
	if a.acl == nil {
		return true
	}
	return a.acl(from, to, port)
}

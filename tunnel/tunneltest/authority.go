package tunneltest

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
)

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
	CA   *testpki.CA // nil: a member no CA vouches for
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

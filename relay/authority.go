// Package relay is memberd's relay: a server that forwards opaque packets
// (WireGuard ciphertext) between consortium members who can only dial out,
// and the client members use to reach it.
//
// Layers, as in tailscale's derp: the frame codec is relay/wire; the server
// (Server) owns no sockets and takes QUIC connections and net.Conns from the
// caller; the client (Client) dials QUIC over UDP first, then TLS over TCP on
// the same port, optionally through an HTTP CONNECT proxy, and implements the
// tunnel's packet transport.
//
// Who may connect and who may talk to whom comes from an Authority: a
// snapshot of the consortium policy. Server.UpdateAuthority swaps it
// atomically; members no longer admitted are disconnected at once.
package relay

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/memberd/memberd/relay/wire"
)

// Sentinel errors.
var (
	ErrNotMember  = errors.New("certificate does not chain to a member CA in the policy")
	ErrRevoked    = errors.New("certificate is revoked by the policy")
	ErrClosed     = errors.New("relay closed")
	ErrNoRelay    = errors.New("no relay connected")
	ErrConfig     = errors.New("invalid relay configuration")
	ErrProxy      = errors.New("HTTP CONNECT proxy refused the tunnel")
	ErrPin        = errors.New("relay certificate does not match its pin in the policy")
	ErrPacketSize = errors.New("packet larger than the relay path allows")
)

// Authority is the part of the consortium policy the relay consumes: an
// immutable snapshot (replace it, never mutate it). The policy package's
// snapshot is adapted to it in cmd.
type Authority interface {
	// MemberForCert returns the member a peer's certificate chain (leaf
	// first, as sent in TLS) belongs to: the leaf must chain to a member CA
	// in the policy at time now and not be revoked. Errors wrap ErrNotMember
	// or ErrRevoked.
	MemberForCert(chain []*x509.Certificate, now time.Time) (member string, err error)
	// Allowed reports whether member from may send packets to member to.
	Allowed(from, to string) bool
	// Relays lists the consortium's relays with the pins of their
	// certificates' public keys.
	Relays() []RelayInfo
}

// RelayInfo is one relay of the policy.
type RelayInfo struct {
	ID   string // short id, e.g. "relay-1"
	Addr string // host:port, the same port for UDP (QUIC) and TCP (TLS)
	// Pin is "sha256/" + base64 (standard, padded) of the SHA-256 of the
	// relay certificate's SubjectPublicKeyInfo (see PinOf).
	Pin string
}

// Validate checks one relay entry.
func (r RelayInfo) Validate() error {
	if !wire.ValidID(r.ID) {
		return fmt.Errorf("%w: relay id %q must be 1..%d bytes", ErrConfig, r.ID, wire.MaxIDLen)
	}
	if r.Addr == "" || !strings.Contains(r.Addr, ":") {
		return fmt.Errorf("%w: relay %q: address %q must be host:port", ErrConfig, r.ID, r.Addr)
	}
	if !strings.HasPrefix(r.Pin, "sha256/") {
		return fmt.Errorf("%w: relay %q: pin %q must start with sha256/ (see PinOf)", ErrConfig, r.ID, r.Pin)
	}
	return nil
}

// PinOf returns the pin of a certificate's public key.
func PinOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256/" + base64.StdEncoding.EncodeToString(sum[:])
}

// StaticAuthority is an Authority from plain data: member CAs, revoked
// certificates, an ACL and the relay list. cmd uses it until the policy
// package lands; tests use it. Build it with NewStaticAuthority and do not
// mutate it afterwards.
type StaticAuthority struct {
	members map[string]*x509.CertPool
	revoked map[string]bool // hex SHA-256 of the leaf's DER
	acl     map[[2]string]bool
	open    bool
	relays  []RelayInfo
}

var _ Authority = (*StaticAuthority)(nil)

// StaticPolicy is the input of NewStaticAuthority.
type StaticPolicy struct {
	// MemberCAs maps member id to the CA certificates that issue its
	// appliance identities.
	MemberCAs map[string][]*x509.Certificate
	// Revoked lists leaf certificates that must be refused.
	Revoked []*x509.Certificate
	// Allow lists [from, to] pairs; each pair allows one direction. Nil
	// Allow with AllowAll false allows nothing.
	Allow [][2]string
	// AllowAll allows every member to reach every other member.
	AllowAll bool
	Relays   []RelayInfo
}

// NewStaticAuthority validates p and builds an Authority from it.
func NewStaticAuthority(p StaticPolicy) (*StaticAuthority, error) {
	a := &StaticAuthority{
		members: map[string]*x509.CertPool{},
		revoked: map[string]bool{},
		acl:     map[[2]string]bool{},
		open:    p.AllowAll,
	}
	for m, cas := range p.MemberCAs {
		if !wire.ValidID(m) {
			return nil, fmt.Errorf("%w: member id %q must be 1..%d bytes", ErrConfig, m, wire.MaxIDLen)
		}
		if len(cas) == 0 {
			return nil, fmt.Errorf("%w: member %q has no CA certificate", ErrConfig, m)
		}
		pool := x509.NewCertPool()
		for _, c := range cas {
			pool.AddCert(c)
		}
		a.members[m] = pool
	}
	for _, c := range p.Revoked {
		a.revoked[certHash(c)] = true
	}
	for _, pair := range p.Allow {
		for _, m := range pair {
			if _, ok := a.members[m]; !ok {
				return nil, fmt.Errorf("%w: ACL names %q, which is not a member", ErrConfig, m)
			}
		}
		a.acl[pair] = true
	}
	seen := map[string]bool{}
	for _, r := range p.Relays {
		if err := r.Validate(); err != nil {
			return nil, err
		}
		if seen[r.ID] {
			return nil, fmt.Errorf("%w: relay id %q listed twice", ErrConfig, r.ID)
		}
		seen[r.ID] = true
		a.relays = append(a.relays, r)
	}
	return a, nil
}

func certHash(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// MemberForCert implements Authority.
func (a *StaticAuthority) MemberForCert(chain []*x509.Certificate, now time.Time) (string, error) {
	if len(chain) == 0 {
		return "", fmt.Errorf("%w: no certificate presented", ErrNotMember)
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	names := make([]string, 0, len(a.members))
	for m := range a.members {
		names = append(names, m)
	}
	sort.Strings(names) // deterministic when CAs overlap
	for _, m := range names {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots: a.members[m], Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			continue
		}
		if a.revoked[certHash(leaf)] {
			return "", fmt.Errorf("%w: %q (serial %s) of member %q", ErrRevoked, leaf.Subject.CommonName, leaf.SerialNumber, m)
		}
		return m, nil
	}
	return "", fmt.Errorf("%w: %q issued by %q", ErrNotMember, leaf.Subject.CommonName, leaf.Issuer.CommonName)
}

// Allowed implements Authority.
func (a *StaticAuthority) Allowed(from, to string) bool {
	if _, ok := a.members[to]; !ok || from == to {
		return false
	}
	if _, ok := a.members[from]; !ok {
		return false
	}
	return a.open || a.acl[[2]string{from, to}]
}

// Relays implements Authority.
func (a *StaticAuthority) Relays() []RelayInfo { return a.relays }

package policy

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Policy is one parsed, validated policy version together with the
// signatures of its bundle. It is immutable: share it freely between
// goroutines, and never modify what its accessors return.
type Policy struct {
	doc     []byte
	sigs    []Signature
	cfgSigs []ConfigSignature
	d       *Document
	hash    Hash
	prev    Hash

	members   map[string]*Member
	byMSP     map[string]*Member
	byAddr    map[netip.Addr]*Member
	byCASubj  map[string][]*Member // RawSubject of a member CA -> members
	allCAs    *x509.CertPool
	acl       []aclRule
	revAdmin  map[AdminRef]bool
	revSPKI   map[[32]byte]bool
	revSerial map[string][]*big.Int // member id -> revoked serials
	revCRL    map[string][]crlIndex // member id -> its CRLs

	views *viewCache // ForChannel's views of this value (nil in a view)
	whole *Policy    // the policy a view was made from (nil if not a view)
}

// crlIndex is one member CRL, indexed for lookups.
type crlIndex struct {
	ca      *x509.Certificate
	serials map[string]bool // big.Int.String() of each revoked serial
}

type aclRule struct {
	from, to selectorSet
	ports    []PortRange
}

type selectorSet struct {
	all     bool
	members map[string]bool
	roles   map[Role]bool
}

func (p *Policy) makeSet(sels []string) selectorSet {
	s := selectorSet{members: map[string]bool{}, roles: map[Role]bool{}}
	for _, x := range sels {
		switch {
		case x == "*":
			s.all = true
		case strings.HasPrefix(x, "role:"):
			s.roles[Role(x[5:])] = true
		default:
			s.members[x] = true
		}
	}
	return s
}

func (s *selectorSet) has(m *Member) bool {
	if s.all || s.members[m.ID] {
		return true
	}
	for _, r := range m.Roles {
		if s.roles[r] {
			return true
		}
	}
	return false
}

func newPolicy(doc []byte, d *Document, sigs []Signature) *Policy {
	p := &Policy{
		doc: doc, sigs: sigs, d: d, hash: HashDocument(doc),
		members: map[string]*Member{}, byMSP: map[string]*Member{}, byAddr: map[netip.Addr]*Member{},
		byCASubj: map[string][]*Member{}, allCAs: x509.NewCertPool(),
		revAdmin: map[AdminRef]bool{}, revSPKI: map[[32]byte]bool{}, revSerial: map[string][]*big.Int{},
		revCRL: map[string][]crlIndex{}, views: &viewCache{},
	}
	if d.Previous != "" {
		p.prev, _ = ParseHash(d.Previous) // validated
	}
	for _, m := range d.Members {
		p.members[m.ID], p.byMSP[m.MSPID], p.byAddr[m.Addr] = m, m, m
		for _, c := range m.CA {
			k := string(c.RawSubject)
			if !slices.Contains(p.byCASubj[k], m) {
				p.byCASubj[k] = append(p.byCASubj[k], m)
			}
			p.allCAs.AddCert(c)
		}
	}
	for _, m := range d.Members {
		for _, crl := range m.CRL {
			ix := crlIndex{ca: crl.CA, serials: map[string]bool{}}
			for _, e := range crl.List.RevokedCertificateEntries {
				if e.SerialNumber != nil {
					ix.serials[e.SerialNumber.String()] = true
				}
			}
			p.revCRL[m.ID] = append(p.revCRL[m.ID], ix)
		}
	}
	for _, r := range d.ACL {
		p.acl = append(p.acl, aclRule{from: p.makeSet(r.From), to: p.makeSet(r.To), ports: r.Ports})
	}
	for _, a := range d.Revocations.AdminKeys {
		p.revAdmin[*a] = true
	}
	for _, rc := range d.Revocations.Certificates {
		if rc.spki != nil {
			p.revSPKI[[32]byte(rc.spki)] = true
		} else {
			p.revSerial[rc.Member] = append(p.revSerial[rc.Member], rc.serial)
		}
	}
	return p
}

// Version is the document's version (1 = genesis).
func (p *Policy) Version() uint64 { return p.d.Version }

// Hash identifies this version: SHA-256 of the exact document bytes.
func (p *Policy) Hash() Hash { return p.hash }

// Previous is the Hash of the previous version (zero for genesis).
func (p *Policy) Previous() Hash { return p.prev }

// Consortium is the consortium's name.
func (p *Policy) Consortium() string { return p.d.Consortium }

// Document is the parsed document (read-only).
func (p *Policy) Document() *Document { return p.d }

// DocumentBytes returns a copy of the exact document bytes.
func (p *Policy) DocumentBytes() []byte { return bytes.Clone(p.doc) }

// Signatures returns the bundle's signatures (unverified; see Verify).
func (p *Policy) Signatures() []Signature { return slices.Clone(p.sigs) }

// Marshal returns the bundle file: document bytes and signature trailer.
func (p *Policy) Marshal() []byte { return marshalBundle(p.doc, p.sigs, p.cfgSigs) }

// ConfigSignatures returns the admins' Fabric signatures on the channel
// ConfigUpdate (bundle lines #cfgsig), unchecked: node/channelconfig
// checks them against the update it derives.
func (p *Policy) ConfigSignatures() []ConfigSignature { return slices.Clone(p.cfgSigs) }

// WithConfigSignature returns a copy of p with sig appended (one by the
// same admin replaces the old one). It does not check the signature.
func (p *Policy) WithConfigSignature(sig ConfigSignature) *Policy {
	q := *p
	q.views = &viewCache{} // views carry the signatures
	q.cfgSigs = slices.DeleteFunc(slices.Clone(p.cfgSigs), func(s ConfigSignature) bool { return s.Admin() == sig.Admin() })
	q.cfgSigs = append(q.cfgSigs, sig)
	return &q
}

// Members returns the members in document order (read-only).
func (p *Policy) Members() []*Member { return slices.Clone(p.d.Members) }

// Member returns the member with the given id, or nil.
func (p *Policy) Member(id string) *Member { return p.members[id] }

// MemberByMSPID returns the member with the given Fabric MSP id, or nil.
func (p *Policy) MemberByMSPID(mspID string) *Member { return p.byMSP[mspID] }

// MemberByAddr returns the member with the given overlay address, or nil.
func (p *Policy) MemberByAddr(a netip.Addr) *Member { return p.byAddr[a] }

// Relays returns the relays in document order (read-only).
func (p *Policy) Relays() []*Relay { return slices.Clone(p.d.Relays) }

// Ledger returns the ledger parameters.
func (p *Policy) Ledger() Ledger { return p.d.Ledger }

// Consenters returns the consenter members in ledger.consenters order.
func (p *Policy) Consenters() []*Member {
	out := make([]*Member, 0, len(p.d.Ledger.Consenters))
	for _, id := range p.d.Ledger.Consenters {
		out = append(out, p.members[id])
	}
	return out
}

// CAPool returns a new pool with every member CA certificate, for TLS
// configs; use MemberForCertificate to learn which member a peer is.
func (p *Policy) CAPool() *x509.CertPool { return p.allCAs.Clone() }

// Allowed reports whether member from may open connections to member to on
// port. Unknown members and anything no ACL rule allows are denied.
func (p *Policy) Allowed(from, to string, port uint16) bool {
	fm, tm := p.members[from], p.members[to]
	if fm == nil || tm == nil {
		return false
	}
	for i := range p.acl {
		r := &p.acl[i]
		if r.from.has(fm) && r.to.has(tm) {
			for _, pr := range r.ports {
				if pr.Contains(port) {
					return true
				}
			}
		}
	}
	return false
}

// AllowedPair reports whether a and b may exchange packets at all: some rule
// allows a connection from one to the other, on any port. A relay, which
// sees only ciphertext, forwards between members by this test.
func (p *Policy) AllowedPair(a, b string) bool {
	am, bm := p.members[a], p.members[b]
	if am == nil || bm == nil {
		return false
	}
	for i := range p.acl {
		r := &p.acl[i]
		if (r.from.has(am) && r.to.has(bm)) || (r.from.has(bm) && r.to.has(am)) {
			return true
		}
	}
	return false
}

// MemberForCertificate returns the member whose CA issued the first
// certificate of one of chains (leaf first, then intermediates, as a TLS
// peer presents them), valid now and not revoked.
func (p *Policy) MemberForCertificate(chains [][]*x509.Certificate) (*Member, error) {
	return p.MemberForCertificateAt(chains, time.Now())
}

// MemberForCertificateAt is MemberForCertificate at a given time.
func (p *Policy) MemberForCertificateAt(chains [][]*x509.Certificate, at time.Time) (*Member, error) {
	var why error = fmt.Errorf("%w: no certificate presented", ErrNotMember)
	for _, chain := range chains {
		if len(chain) == 0 || chain[0] == nil {
			continue
		}
		m, err := p.memberForChain(chain, at)
		if err == nil {
			return m, nil
		}
		why = err
	}
	return nil, why
}

func (p *Policy) memberForChain(chain []*x509.Certificate, at time.Time) (*Member, error) {
	leaf := chain[0]
	inter := x509.NewCertPool()
	var cands []*Member
	for _, c := range chain {
		if c == nil {
			continue
		}
		if c != leaf {
			inter.AddCert(c)
		}
		for _, m := range p.byCASubj[string(c.RawIssuer)] {
			if !slices.Contains(cands, m) {
				cands = append(cands, m)
			}
		}
	}
	if len(cands) == 0 {
		if p.whole != nil {
			return nil, fmt.Errorf("%w: certificate %q is not issued by the CA of any member of channel %q (ledger.channels) in policy version %d", ErrNotMember, leaf.Subject, p.d.Ledger.Channel, p.d.Version)
		}
		return nil, fmt.Errorf("%w: certificate %q is not issued by any member CA of policy version %d", ErrNotMember, leaf.Subject, p.d.Version)
	}
	var why error
	for _, m := range cands {
		verified, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err != nil {
			why = fmt.Errorf("%w: certificate %q does not verify against member %s's CA: %v", ErrNotMember, leaf.Subject, m.ID, err)
			continue
		}
		for _, vc := range verified {
			if rc := p.revokedInChain(m.ID, vc); rc != nil {
				why = fmt.Errorf("%w: %w: certificate %q of member %s (serial %s) is revoked by policy version %d", ErrNotMember, ErrRevoked, rc.Subject, m.ID, rc.SerialNumber, p.d.Version)
				continue
			}
			return m, nil
		}
	}
	return nil, why
}

// VerifyMemberCertificate checks that chain (leaf first, then any
// intermediates) is a valid, unrevoked identity of member at time at.
func (p *Policy) VerifyMemberCertificate(member string, chain []*x509.Certificate, at time.Time) error {
	if p.members[member] == nil {
		return fmt.Errorf("%w: %q is not a member in policy version %d", ErrNotMember, member, p.d.Version)
	}
	m, err := p.MemberForCertificateAt([][]*x509.Certificate{chain}, at)
	if err != nil {
		return err
	}
	if m.ID != member {
		return fmt.Errorf("%w: the certificate belongs to member %s, not %s", ErrNotMember, m.ID, member)
	}
	return nil
}

// revokedInChain returns the first revoked certificate of a verified chain.
func (p *Policy) revokedInChain(member string, chain []*x509.Certificate) *x509.Certificate {
	for _, c := range chain {
		if p.Revoked(member, c) {
			return c
		}
	}
	return nil
}

// Revoked reports whether the certificate, issued under member's CA, is
// revoked by serial or by key (revocations.certificates), or by the CRL of
// the member CA that issued it (members[].crls).
func (p *Policy) Revoked(member string, c *x509.Certificate) bool {
	if len(p.revSPKI) > 0 && p.revSPKI[sha256.Sum256(c.RawSubjectPublicKeyInfo)] {
		return true
	}
	for _, s := range p.revSerial[member] {
		if s.Cmp(c.SerialNumber) == 0 {
			return true
		}
	}
	for _, ix := range p.revCRL[member] {
		if c.SerialNumber != nil && issuedBy(c, ix.ca) && ix.serials[c.SerialNumber.String()] {
			return true
		}
	}
	return false
}

// issuedBy reports whether ca is c's issuer by name and, when c names it,
// by key identifier (as a Fabric MSP matches a CRL to a certificate's
// issuer), so a CRL of a replaced CA with the same name does not apply.
func issuedBy(c, ca *x509.Certificate) bool {
	if !bytes.Equal(c.RawIssuer, ca.RawSubject) {
		return false
	}
	return len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, ca.SubjectKeyId)
}

// Admin returns the admin key named by ref, or nil.
func (p *Policy) Admin(ref AdminRef) *Admin {
	m := p.members[ref.Member]
	if m == nil {
		return nil
	}
	for _, a := range m.Admins {
		if a.KeyID == ref.KeyID {
			return a
		}
	}
	return nil
}

// AdminFor returns the admin whose public key is pub (for signing tools that
// know a key but not its name).
func (p *Policy) AdminFor(pub crypto.PublicKey) (AdminRef, bool) {
	for _, m := range p.d.Members {
		for _, a := range m.Admins {
			if k, ok := a.Key.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(pub) {
				return AdminRef{Member: m.ID, KeyID: a.KeyID}, true
			}
		}
	}
	return AdminRef{}, false
}

// adminUsable says why an admin key of this policy cannot vote at time at,
// or "" when it can.
func (p *Policy) adminUsable(ref AdminRef, at time.Time) (*Admin, string) {
	if p.members[ref.Member] == nil {
		return nil, fmt.Sprintf("%s is not a member of version %d", ref.Member, p.d.Version)
	}
	a := p.Admin(ref)
	if a == nil {
		return nil, fmt.Sprintf("%s is not an admin key of member %s in version %d", ref.KeyID, ref.Member, p.d.Version)
	}
	if p.revAdmin[ref] || p.revSPKI[a.SPKI] {
		return a, "admin key is revoked"
	}
	if !a.Expires.IsZero() && !at.Before(a.Expires) {
		return a, "admin key expired at " + a.Expires.UTC().Format(time.RFC3339)
	}
	return a, ""
}

// WithSignature returns a copy of p with sig appended (a signature by the
// same admin replaces the old one). It does not check the signature.
func (p *Policy) WithSignature(sig Signature) *Policy {
	q := *p
	q.views = &viewCache{} // views carry the signatures
	q.sigs = slices.DeleteFunc(slices.Clone(p.sigs), func(s Signature) bool { return s.Admin() == sig.Admin() })
	q.sigs = append(q.sigs, sig)
	return &q
}

// Sign signs the document with s as admin and returns the policy with the
// signature added. When admin is listed in p itself, the signature is
// checked against the listed key, so a wrong key is caught at signing time.
func (p *Policy) Sign(s crypto.Signer, admin AdminRef) (*Policy, error) {
	if !validID(admin.Member) || !validID(admin.KeyID) {
		return nil, fmt.Errorf("%w: bad admin name %q", ErrUnknownAdmin, admin)
	}
	sig, err := SignDocument(s, p.doc)
	if err != nil {
		return nil, err
	}
	if a := p.Admin(admin); a != nil {
		if err := verifySignature(a.Key, p.doc, sig); err != nil {
			return nil, fmt.Errorf("%w: the signing key is not admin key %s listed in this document: %v", ErrUnknownAdmin, admin, err)
		}
	}
	return p.WithSignature(Signature{Member: admin.Member, KeyID: admin.KeyID, Sig: sig}), nil
}

// Package policytest builds consortia for tests: member CAs (from
// internal/testpki), admin keys, policy documents and signed versions, all
// in memory (ECDSA P-256 software keys: a fine fake of an HSM key at the
// crypto.Signer seam).
package policytest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
)

// Consortium is a test consortium: the keys of every member and a document
// template for version 1.
type Consortium struct {
	// Template is the version 1 document Genesis renders; edit it before
	// calling Genesis.
	Template *policy.Document
	// CAs holds each member's CA.
	CAs map[string]*testpki.CA

	keys   map[policy.AdminRef]crypto.Signer
	nextIP netip.Addr
}

// New returns a consortium "test" with n members m1..mn, each with one
// admin key "a1", every member a consenter and writer, two relays, and an
// ACL letting every member reach every other on 7050 and 7051-7059.
func New(tb testing.TB, n int) *Consortium {
	tb.Helper()
	c := &Consortium{CAs: map[string]*testpki.CA{}, keys: map[policy.AdminRef]crypto.Signer{}, nextIP: netip.MustParseAddr("100.64.0.1")}
	d := &policy.Document{
		Format: policy.FormatV1, Consortium: "test", Version: 1,
		Description:   "test consortium",
		OverlayPrefix: "100.64.0.0/16",
		Relays: []*policy.Relay{
			{ID: "r1", Address: "127.0.0.1:4431", SPKISHA256: strings.Repeat("ab", 32)},
			{ID: "r2", Address: "relay2.example.test:443", SPKISHA256: strings.Repeat("cd", 32)},
		},
		ACL: []*policy.ACLRule{{From: []string{"*"}, To: []string{"*"},
			Ports: []policy.PortRange{{Lo: 7050, Hi: 7050}, {Lo: 7051, Hi: 7059}}}},
		Ledger: policy.Ledger{Channel: "trade", BatchTimeout: "2s",
			BatchSize: policy.BatchSize{MaxMessageCount: 500, AbsoluteMaxBytes: 10 << 20, PreferredMaxBytes: 2 << 20}},
	}
	for i := 1; i <= n; i++ {
		m := c.NewMember(tb, fmt.Sprintf("m%d", i))
		m.Roles = []policy.Role{policy.RoleConsenter, policy.RoleWriter}
		d.Members = append(d.Members, m)
		d.Ledger.Consenters = append(d.Ledger.Consenters, m.ID)
	}
	c.Template = d
	return c
}

// NewMember makes a CA and one admin key "a1" for a new member id and
// returns its document entry (role writer, next overlay IP).
func (c *Consortium) NewMember(tb testing.TB, id string) *policy.Member {
	tb.Helper()
	ca := testpki.NewCA(tb, id+" CA")
	c.CAs[id] = ca
	m := &policy.Member{ID: id, Name: "Member " + id, MSPID: id + "MSP", OverlayIP: c.nextIP.String(),
		Roles: []policy.Role{policy.RoleWriter}, CACerts: ca.PEM,
		Admins: []*policy.Admin{c.NewAdmin(tb, id, "a1")}}
	c.nextIP = c.nextIP.Next()
	return m
}

// NewAdmin makes an admin key for member/keyID and returns its entry.
func (c *Consortium) NewAdmin(tb testing.TB, member, keyID string) *policy.Admin {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	c.keys[policy.AdminRef{Member: member, KeyID: keyID}] = k
	return &policy.Admin{KeyID: keyID, PublicKey: PublicKeyPEM(tb, k.Public())}
}

// AddAdminKey registers an existing key (an HSM key, say) as admin
// member/keyID and returns its entry.
func (c *Consortium) AddAdminKey(tb testing.TB, member, keyID string, s crypto.Signer) *policy.Admin {
	tb.Helper()
	c.keys[policy.AdminRef{Member: member, KeyID: keyID}] = s
	return &policy.Admin{KeyID: keyID, PublicKey: PublicKeyPEM(tb, s.Public())}
}

// Key returns the signer of an admin key made by this consortium.
func (c *Consortium) Key(member, keyID string) crypto.Signer {
	return c.keys[policy.AdminRef{Member: member, KeyID: keyID}]
}

// Render marshals a document to YAML bytes.
func Render(tb testing.TB, d *policy.Document) []byte {
	tb.Helper()
	b, err := yaml.Marshal(d)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Genesis renders and parses the template as version 1.
func (c *Consortium) Genesis(tb testing.TB) *policy.Policy {
	tb.Helper()
	return MustParse(tb, Render(tb, c.Template))
}

// MustParse parses a bundle or fails the test.
func MustParse(tb testing.TB, b []byte) *policy.Policy {
	tb.Helper()
	p, err := policy.Parse(b)
	if err != nil {
		tb.Fatalf("parse: %v\n%s", err, b)
	}
	return p
}

// NextDocument returns the document bytes of the version after prev: a copy
// of prev's document with version+1 and previous = prev's hash, then edit.
func (c *Consortium) NextDocument(tb testing.TB, prev *policy.Policy, edit func(d *policy.Document)) []byte {
	tb.Helper()
	var d policy.Document
	if err := yaml.Unmarshal(prev.DocumentBytes(), &d); err != nil {
		tb.Fatal(err)
	}
	d.Version = prev.Version() + 1
	d.Previous = prev.Hash().String()
	if edit != nil {
		edit(&d)
	}
	return Render(tb, &d)
}

// Next is NextDocument parsed and signed by the first admin ("a1") of each
// of signers.
func (c *Consortium) Next(tb testing.TB, prev *policy.Policy, edit func(d *policy.Document), signers ...string) *policy.Policy {
	tb.Helper()
	return c.Sign(tb, MustParse(tb, c.NextDocument(tb, prev, edit)), signers...)
}

// Sign adds the signature of admin "a1" of each member in members.
func (c *Consortium) Sign(tb testing.TB, p *policy.Policy, members ...string) *policy.Policy {
	tb.Helper()
	for _, m := range members {
		p = c.SignAs(tb, p, m, "a1")
	}
	return p
}

// SignAs adds the signature of one admin key.
func (c *Consortium) SignAs(tb testing.TB, p *policy.Policy, member, keyID string) *policy.Policy {
	tb.Helper()
	k := c.Key(member, keyID)
	if k == nil {
		tb.Fatalf("no key for %s/%s", member, keyID)
	}
	sig, err := policy.SignDocument(k, p.DocumentBytes())
	if err != nil {
		tb.Fatal(err)
	}
	return p.WithSignature(policy.Signature{Member: member, KeyID: keyID, Sig: sig})
}

// Members returns the ids m1..mn.
func Members(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("m%d", i+1)
	}
	return out
}

// PublicKeyPEM encodes a public key as PEM "PUBLIC KEY".
func PublicKeyPEM(tb testing.TB, pub crypto.PublicKey) string {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

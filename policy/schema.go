package policy

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// FormatV1 is the value of the `format` key of every policy document this
// package reads. A future incompatible schema gets a new value.
const FormatV1 = "memberd-policy/v1"

// Document is the policy YAML as written by people. Fields tagged yaml:"-"
// are derived by Parse (parsed certificates, keys, addresses) and are not part
// of the file. A Document obtained from a Policy is read-only.
type Document struct {
	// Format must be FormatV1.
	Format string `yaml:"format"`
	// Consortium names the consortium; it can never change between versions.
	Consortium string `yaml:"consortium"`
	// Version is 1 for genesis and grows with every amendment.
	Version uint64 `yaml:"version"`
	// Previous is the Hash ("sha256:<hex>") of the previous version's
	// document bytes; empty for version 1, required after.
	Previous string `yaml:"previous,omitempty"`
	// Description is free text for humans.
	Description string `yaml:"description,omitempty"`
	// OverlayPrefix, when set, is the overlay network (e.g. 100.64.0.0/24)
	// that holds every member's overlay_ip.
	OverlayPrefix string `yaml:"overlay_prefix,omitempty"`
	// Members of the consortium (at least one).
	Members []*Member `yaml:"members"`
	// Relays members dial out to (at least one).
	Relays []*Relay `yaml:"relays"`
	// ACL lists who may open connections to whom on which ports; anything
	// not allowed is denied.
	ACL []*ACLRule `yaml:"acl,omitempty"`
	// Ledger holds the ordering parameters.
	Ledger Ledger `yaml:"ledger"`
	// Revocations of certificates and admin keys.
	Revocations Revocations `yaml:"revocations,omitempty"`
	// Amendment says how many member votes a new version needs.
	Amendment Amendment `yaml:"amendment,omitempty"`

	overlay netip.Prefix
}

// Role is what a member does in the consortium.
type Role string

// Roles.
const (
	// RoleConsenter members order blocks (raft voters); they must be listed
	// in ledger.consenters.
	RoleConsenter Role = "consenter"
	// RoleObserver members follow the ledger without voting.
	RoleObserver Role = "observer"
	// RoleWriter members may submit transactions.
	RoleWriter Role = "writer"
	// RoleReader members may fetch blocks.
	RoleReader Role = "reader"
)

var knownRoles = map[Role]bool{RoleConsenter: true, RoleObserver: true, RoleWriter: true, RoleReader: true}

// Member is one organisation of the consortium.
type Member struct {
	// ID is the member's stable name ([A-Za-z0-9][A-Za-z0-9._-]{0,63}).
	ID string `yaml:"id"`
	// Name is the display name.
	Name string `yaml:"name"`
	// MSPID is the member's Hyperledger Fabric MSP id (unique).
	MSPID string `yaml:"msp_id"`
	// OverlayIP is the member's address inside the tunnel (unique).
	OverlayIP string `yaml:"overlay_ip"`
	// Roles of the member (at least one).
	Roles []Role `yaml:"roles"`
	// CACerts is PEM: the member CA certificate(s) that issue the member's
	// appliance identities. Each must be a CA certificate.
	CACerts string `yaml:"ca_certs"`
	// TLSCACerts is optional PEM for a separate TLS CA.
	TLSCACerts string `yaml:"tls_ca_certs,omitempty"`
	// CRLs is optional PEM: X.509 CRLs ("X509 CRL" blocks, at most one per
	// CA), each signed by one of CACerts and carrying an authority key
	// identifier equal to that CA's subject key identifier. A certificate
	// issued by that CA whose serial the CRL lists is revoked, as if listed
	// in revocations.certificates; the channel config carries the CRLs in
	// the member org's MSP (revocation_list), so stock Fabric peers refuse
	// it too. A CRL's dates and revocation times are not read (as Fabric
	// does not): it counts from the version that lists it until a version
	// drops it.
	CRLs string `yaml:"crls,omitempty"`
	// LedgerEndpoints are the client-facing addresses ("host:port", at most
	// 8) of the member's ledger node: what Fabric peers and SDKs dial for
	// Broadcast and Deliver, usually the appliance's LAN address
	// (memberd.yaml ledger.listen). A channel config built from the policy
	// names them as the member's orderer org Endpoints. Optional: when
	// empty, the channel config falls back to the member's consenter
	// (overlay) address, which peers on the member's LAN cannot reach
	// without peer.deliveryclient.addressOverrides. They are not the raft
	// addresses: consenters always talk over the tunnel.
	LedgerEndpoints []string `yaml:"ledger_endpoints,omitempty"`
	// LedgerConsenter is, for a consenter member, its consenter entry in the
	// channel config (the TLS certificate of its ledger node and the port
	// other orderers dial at its overlay address). Optional: without it a
	// channel config derived from the policy keeps the member's consenter
	// of the config in force, which a consenter new to the channel has not;
	// with it every member derives the same consenter entry, byte for byte.
	LedgerConsenter *LedgerConsenter `yaml:"ledger_consenter,omitempty"`
	// Admins may sign policy amendments for this member (at least one).
	Admins []*Admin `yaml:"admins"`

	// Addr is OverlayIP parsed.
	Addr netip.Addr `yaml:"-"`
	// CA and TLSCA are CACerts and TLSCACerts parsed.
	CA    []*x509.Certificate `yaml:"-"`
	TLSCA []*x509.Certificate `yaml:"-"`
	// CRL is CRLs parsed, in order, each with the CA of CA that signed it.
	CRL []*CRL `yaml:"-"`

	pool *x509.CertPool
}

// CRL is one of a member's certificate revocation lists, parsed.
type CRL struct {
	// List is the CRL; List.Raw is its DER.
	List *x509.RevocationList
	// CA is the member CA certificate that signed it.
	CA *x509.Certificate
}

// LedgerConsenter is a consenter member's entry in the channel config.
type LedgerConsenter struct {
	// TLSCert is PEM: exactly one certificate, the one the member's ledger
	// node presents (client and server TLS); it must be issued by the
	// member's TLS CA (or CA, when it names no TLS CA).
	TLSCert string `yaml:"tls_cert"`
	// Port is the ledger gRPC port at the member's overlay address that
	// other orderers dial (0: the channel config's default, 7050).
	Port uint16 `yaml:"port,omitempty"`

	// Cert is TLSCert parsed.
	Cert *x509.Certificate `yaml:"-"`
}

// HasRole reports whether the member has role r.
func (m *Member) HasRole(r Role) bool {
	for _, x := range m.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// Admin is a key that may sign amendments for its member.
type Admin struct {
	// KeyID names the key within its member ([A-Za-z0-9][A-Za-z0-9._-]{0,63}).
	KeyID string `yaml:"key_id"`
	// PublicKey is a PEM "PUBLIC KEY" (PKIX): ECDSA P-256/P-384, Ed25519 or
	// RSA >= 2048 bits. Exactly one of PublicKey and Certificate is set.
	PublicKey string `yaml:"public_key,omitempty"`
	// Certificate is a PEM certificate holding the key; its NotAfter also
	// bounds the key's validity.
	Certificate string `yaml:"certificate,omitempty"`
	// NotAfter (RFC 3339), when set, is when the key stops counting.
	NotAfter string `yaml:"not_after,omitempty"`

	// Key is the parsed public key.
	Key crypto.PublicKey `yaml:"-"`
	// Expires is the effective expiry (zero: never).
	Expires time.Time `yaml:"-"`
	// SPKI is the SHA-256 of the key's SubjectPublicKeyInfo.
	SPKI [32]byte `yaml:"-"`
}

// Relay is a relay server members dial out to.
type Relay struct {
	// ID names the relay.
	ID string `yaml:"id"`
	// Address is host:port (a DNS name or an IP).
	Address string `yaml:"address"`
	// SPKISHA256 pins the relay's TLS key: hex SHA-256 of its
	// SubjectPublicKeyInfo. At least one of SPKISHA256 and CACerts is set.
	SPKISHA256 string `yaml:"spki_sha256,omitempty"`
	// CACerts is PEM: CA certificates that may issue the relay's certificate.
	CACerts string `yaml:"ca_certs,omitempty"`
	// Operator optionally names the member that runs the relay.
	Operator string `yaml:"operator,omitempty"`

	// Pin is SPKISHA256 decoded (nil when unset).
	Pin []byte `yaml:"-"`
	// CA is CACerts parsed.
	CA []*x509.Certificate `yaml:"-"`
}

// ACLRule allows connections from any of From to any of To on Ports.
// A selector is a member id, "role:<role>", or "*" (every member).
type ACLRule struct {
	From  []string    `yaml:"from"`
	To    []string    `yaml:"to"`
	Ports []PortRange `yaml:"ports"`
	// Comment is free text for humans.
	Comment string `yaml:"comment,omitempty"`
}

// PortRange is an inclusive range of ports; in YAML a number (7050) or a
// string "lo-hi" ("7051-7059").
type PortRange struct{ Lo, Hi uint16 }

// Contains reports whether p is in the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.Lo && p <= r.Hi }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (r *PortRange) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a port is a number or \"lo-hi\"", n.Line)
	}
	pr, err := ParsePortRange(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*r = pr
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (r PortRange) MarshalYAML() (any, error) {
	if r.Lo == r.Hi {
		return int(r.Lo), nil
	}
	return r.String(), nil
}

// ParsePortRange parses "7050" or "7051-7059" (ports 1..65535).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b := a
	var err2 error
	if isRange {
		b, err2 = strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	}
	if err1 != nil || err2 != nil || a == 0 || b < a {
		return PortRange{}, fmt.Errorf("bad port or port range %q: want 1..65535 or \"lo-hi\" with lo <= hi", s)
	}
	return PortRange{Lo: uint16(a), Hi: uint16(b)}, nil
}

// Ledger holds the ordering service parameters (Fabric etcdraft style).
type Ledger struct {
	// Channel is the Fabric channel name ([a-z][a-z0-9.-]{0,248}) of a
	// single-channel ledger; it is left out when Channels is given.
	Channel string `yaml:"channel,omitempty"`
	// BatchSize bounds each block.
	BatchSize BatchSize `yaml:"batch_size"`
	// BatchTimeout (Go duration, 1ms..10m) cuts a block that is not full.
	BatchTimeout string `yaml:"batch_timeout"`
	// Consenters are the member ids that order (raft voters); each must have
	// role consenter and every consenter member must be listed. With
	// Channels, they are the members that run a ledger node, and each
	// channel's consenters are some of them.
	Consenters []string `yaml:"consenters"`
	// Channels, when given, are the channels the ledger serves (instead of
	// the single Channel), each with its own raft group, blocks and
	// genesis block (Policy.Channels, Policy.ForChannel).
	Channels []*Channel `yaml:"channels,omitempty"`

	// Timeout is BatchTimeout parsed.
	Timeout time.Duration `yaml:"-"`
}

// Channel is one entry of ledger.channels.
type Channel struct {
	// Name is the Fabric channel name ([a-z][a-z0-9.-]{0,248}), unique.
	Name string `yaml:"name"`
	// Consenters order the channel (its raft voters): at least one, each in
	// ledger.consenters and in Members.
	Consenters []string `yaml:"consenters"`
	// Members are the member orgs of the channel (its Application and
	// Orderer orgs); their clients alone may broadcast to and read the
	// channel. Empty: every member of the policy.
	Members []string `yaml:"members,omitempty"`
	// BatchSize and BatchTimeout, when set, replace the ledger's for this
	// channel (BatchSize as a whole, with the same limits).
	BatchSize    *BatchSize `yaml:"batch_size,omitempty"`
	BatchTimeout string     `yaml:"batch_timeout,omitempty"`

	// Timeout is BatchTimeout parsed (0 when unset).
	Timeout time.Duration `yaml:"-"`
}

// BatchSize mirrors Fabric's orderer BatchSize.
type BatchSize struct {
	// MaxMessageCount: 1..100000 transactions per block.
	MaxMessageCount uint32 `yaml:"max_message_count"`
	// AbsoluteMaxBytes: 1 KiB..99 MiB, a hard block size limit.
	AbsoluteMaxBytes uint32 `yaml:"absolute_max_bytes"`
	// PreferredMaxBytes: 1..AbsoluteMaxBytes, the size a block is cut at.
	PreferredMaxBytes uint32 `yaml:"preferred_max_bytes"`
}

// Revocations lists certificates and admin keys that no longer count.
type Revocations struct {
	Certificates []*RevokedCert `yaml:"certificates,omitempty"`
	AdminKeys    []*AdminRef    `yaml:"admin_keys,omitempty"`
}

// RevokedCert revokes a certificate either by issuing member and serial
// number, or by the SHA-256 of its SubjectPublicKeyInfo (any issuer).
type RevokedCert struct {
	// Member and Serial (decimal, or hex with 0x) name a certificate issued
	// by one of the member's CAs.
	Member string `yaml:"member,omitempty"`
	Serial string `yaml:"serial,omitempty"`
	// SPKISHA256 (hex) revokes every certificate for that key.
	SPKISHA256 string `yaml:"spki_sha256,omitempty"`
	// Reason is free text for humans.
	Reason string `yaml:"reason,omitempty"`

	serial *big.Int
	spki   []byte
}

// AdminRef names one admin key.
type AdminRef struct {
	Member string `yaml:"member"`
	KeyID  string `yaml:"key_id"`
}

func (a AdminRef) String() string { return a.Member + "/" + a.KeyID }

// Amendment holds the voting rules. The zero value means "majority" for
// every change kind.
type Amendment struct {
	// Default applies to change kinds without their own rule (default majority).
	Default Threshold `yaml:"default,omitempty"`
	// Rules sets stricter thresholds per change kind.
	Rules map[ChangeKind]Threshold `yaml:"rules,omitempty"`
}

// Threshold is a voting rule: "majority" (floor(n/2)+1 members), "unanimous"
// (every member), a fraction "p/q" (at least ceil(p*n/q) members) or a member
// count. n is the number of members of the current policy. The zero value is
// majority.
type Threshold struct {
	kind  thresholdKind
	num   int // fraction numerator, or the count
	denom int
}

type thresholdKind uint8

const (
	thMajority thresholdKind = iota
	thUnanimous
	thFraction
	thCount
)

// Majority, Unanimous, Fraction and Count build thresholds.
func Majority() Threshold         { return Threshold{kind: thMajority} }
func Unanimous() Threshold        { return Threshold{kind: thUnanimous} }
func Fraction(p, q int) Threshold { return Threshold{kind: thFraction, num: p, denom: q} }
func Count(k int) Threshold       { return Threshold{kind: thCount, num: k} }

// Need is the number of member votes the rule asks of n members.
func (t Threshold) Need(n int) int {
	switch t.kind {
	case thUnanimous:
		return n
	case thFraction:
		return (t.num*n + t.denom - 1) / t.denom
	case thCount:
		return t.num
	default:
		return n/2 + 1
	}
}

func (t Threshold) String() string {
	switch t.kind {
	case thUnanimous:
		return "unanimous"
	case thFraction:
		return fmt.Sprintf("%d/%d", t.num, t.denom)
	case thCount:
		return strconv.Itoa(t.num)
	default:
		return "majority"
	}
}

// ParseThreshold parses "majority", "unanimous", "p/q" (0<p<=q<=100) or a
// count (1..10000).
func ParseThreshold(s string) (Threshold, error) {
	switch s {
	case "majority":
		return Majority(), nil
	case "unanimous":
		return Unanimous(), nil
	}
	if p, q, ok := strings.Cut(s, "/"); ok {
		a, e1 := strconv.Atoi(p)
		b, e2 := strconv.Atoi(q)
		if e1 != nil || e2 != nil || a <= 0 || b <= 0 || a > b || b > 100 {
			return Threshold{}, fmt.Errorf("bad threshold %q: a fraction is p/q with 0 < p <= q <= 100", s)
		}
		return Fraction(a, b), nil
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 1 || k > 10000 {
		return Threshold{}, fmt.Errorf("bad threshold %q: want majority, unanimous, a fraction p/q or a member count 1..10000", s)
	}
	return Count(k), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (t *Threshold) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a threshold is majority, unanimous, p/q or a number", n.Line)
	}
	th, err := ParseThreshold(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*t = th
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (t Threshold) MarshalYAML() (any, error) {
	if t.kind == thCount {
		return t.num, nil
	}
	return t.String(), nil
}

// IsZero lets yaml omitempty drop a default (majority) threshold.
func (t Threshold) IsZero() bool { return t == Threshold{} }

// ChangeKind classifies what a new version changes. Kinds are computed from
// the diff against the current version, never declared by the proposer.
type ChangeKind string

// Change kinds.
const (
	KindMemberAdded        ChangeKind = "member_added"
	KindMemberRemoved      ChangeKind = "member_removed"
	KindMemberChanged      ChangeKind = "member_changed" // name, MSP id, CAs, overlay IP, roles
	KindAdminsChanged      ChangeKind = "admins_changed"
	KindRelaysChanged      ChangeKind = "relays_changed"
	KindACLChanged         ChangeKind = "acl_changed"
	KindLedgerChanged      ChangeKind = "ledger_changed" // channel(s), batch size, timeout
	KindConsentersChanged  ChangeKind = "consenters_changed"
	KindRevocationsChanged ChangeKind = "revocations_changed"
	KindAmendmentChanged   ChangeKind = "amendment_changed"
	KindMetadataChanged    ChangeKind = "metadata_changed" // description, overlay prefix
)

// AllKinds lists every change kind in the fixed order used in reports.
var AllKinds = []ChangeKind{
	KindMemberAdded, KindMemberRemoved, KindMemberChanged, KindAdminsChanged,
	KindRelaysChanged, KindACLChanged, KindLedgerChanged, KindConsentersChanged,
	KindRevocationsChanged, KindAmendmentChanged, KindMetadataChanged,
}

func knownKind(k ChangeKind) bool {
	for _, x := range AllKinds {
		if x == k {
			return true
		}
	}
	return false
}

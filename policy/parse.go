package policy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Limits of the document, checked while validating.
const (
	MaxMembers  = 1000
	MaxRelays   = 64
	MaxACLRules = 10000
	maxCerts    = 16 // per PEM field
)

var (
	idRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	channelRE = regexp.MustCompile(`^[a-z][a-z0-9.-]{0,248}$`)
)

func validID(s string) bool { return idRE.MatchString(s) }

// Parse reads a bundle file (a document optionally followed by signatures)
// strictly and validates every field. It does not check signatures or the
// version chain: that is Verify's job.
func Parse(data []byte) (*Policy, error) {
	doc, sigs, cfgSigs, err := splitBundle(data)
	if err != nil {
		return nil, err
	}
	d, err := parseDocument(doc)
	if err != nil {
		return nil, err
	}
	p := newPolicy(doc, d, sigs)
	p.cfgSigs = cfgSigs
	return p, nil
}

func parseDocument(doc []byte) (*Document, error) {
	if !utf8.Valid(doc) {
		return nil, fmt.Errorf("%w: the document is not UTF-8", ErrMalformed)
	}
	// Pass 1: structure. One YAML document, no anchors or aliases (they
	// make reviews misleading and can blow up in size).
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	if err := dec.Decode(&root); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, yamlErr(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: the file must hold exactly one YAML document", ErrMalformed)
	}
	if err := noAliases(&root, 0); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	// Pass 2: strict decoding into the schema.
	var d Document
	dec = yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, yamlErr(err))
	}
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &d, nil
}

func yamlErr(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

func noAliases(n *yaml.Node, depth int) error {
	if depth > 64 {
		return errors.New("YAML nested deeper than 64 levels")
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return fmt.Errorf("line %d: YAML anchors and aliases are not allowed in a policy (write values out)", n.Line)
	}
	for _, c := range n.Content {
		if err := noAliases(c, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// validate checks every field and fills the derived ones.
func (d *Document) validate() error {
	if d.Format != FormatV1 {
		return fmt.Errorf("format: want %q, got %q", FormatV1, d.Format)
	}
	if !validID(d.Consortium) {
		return fmt.Errorf("consortium: %q is not a valid name ([A-Za-z0-9][A-Za-z0-9._-]{0,63})", d.Consortium)
	}
	if d.Version < 1 {
		return errors.New("version: must be at least 1")
	}
	if d.Version == 1 && d.Previous != "" {
		return errors.New("previous: version 1 (genesis) has no previous version; remove the key")
	}
	if d.Version > 1 {
		if _, err := ParseHash(d.Previous); err != nil {
			return fmt.Errorf("previous: %v (version %d must name the hash of version %d's document)", err, d.Version, d.Version-1)
		}
	}
	if d.OverlayPrefix != "" {
		p, err := netip.ParsePrefix(d.OverlayPrefix)
		if err != nil {
			return fmt.Errorf("overlay_prefix: %v", err)
		}
		d.overlay = p.Masked()
	}
	if err := d.validateMembers(); err != nil {
		return err
	}
	if err := d.validateRelays(); err != nil {
		return err
	}
	if err := d.validateACL(); err != nil {
		return err
	}
	if err := d.validateLedger(); err != nil {
		return err
	}
	if err := d.validateRevocations(); err != nil {
		return err
	}
	return d.validateAmendment()
}

func (d *Document) validateMembers() error {
	if len(d.Members) == 0 {
		return errors.New("members: at least one member is required")
	}
	if len(d.Members) > MaxMembers {
		return fmt.Errorf("members: %d members, the limit is %d", len(d.Members), MaxMembers)
	}
	ids, msps, addrs := map[string]bool{}, map[string]bool{}, map[netip.Addr]string{}
	cas := map[[32]byte]string{}
	for i, m := range d.Members {
		if m == nil {
			return fmt.Errorf("members[%d]: empty entry", i)
		}
		at := fmt.Sprintf("members[%d] (%s)", i, m.ID)
		if !validID(m.ID) {
			return fmt.Errorf("members[%d].id: %q is not a valid id ([A-Za-z0-9][A-Za-z0-9._-]{0,63})", i, m.ID)
		}
		if ids[m.ID] {
			return fmt.Errorf("%s: duplicate member id", at)
		}
		ids[m.ID] = true
		if strings.TrimSpace(m.Name) == "" {
			return fmt.Errorf("%s.name: required", at)
		}
		if !validID(m.MSPID) {
			return fmt.Errorf("%s.msp_id: %q is not a valid Fabric MSP id", at, m.MSPID)
		}
		if msps[m.MSPID] {
			return fmt.Errorf("%s.msp_id: %q is used by another member", at, m.MSPID)
		}
		msps[m.MSPID] = true
		a, err := netip.ParseAddr(m.OverlayIP)
		if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("%s.overlay_ip: %q is not a unicast IP address", at, m.OverlayIP)
		}
		if other, dup := addrs[a]; dup {
			return fmt.Errorf("%s.overlay_ip: %s is also the address of member %s", at, a, other)
		}
		if d.overlay.IsValid() && !d.overlay.Contains(a) {
			return fmt.Errorf("%s.overlay_ip: %s is outside overlay_prefix %s", at, a, d.overlay)
		}
		addrs[a] = m.ID
		m.Addr = a
		if len(m.Roles) == 0 {
			return fmt.Errorf("%s.roles: at least one role is required (consenter, observer, writer, reader)", at)
		}
		seen := map[Role]bool{}
		for _, r := range m.Roles {
			if !knownRoles[r] {
				return fmt.Errorf("%s.roles: unknown role %q (want consenter, observer, writer, reader)", at, r)
			}
			if seen[r] {
				return fmt.Errorf("%s.roles: role %q listed twice", at, r)
			}
			seen[r] = true
		}
		if m.CA, err = parseCACerts(m.CACerts, true); err != nil {
			return fmt.Errorf("%s.ca_certs: %v", at, err)
		}
		if m.TLSCA, err = parseCACerts(m.TLSCACerts, false); err != nil {
			return fmt.Errorf("%s.tls_ca_certs: %v", at, err)
		}
		if err := m.parseCRLs(at); err != nil {
			return err
		}
		if err := checkEndpoints(m.LedgerEndpoints); err != nil {
			return fmt.Errorf("%s.ledger_endpoints: %v", at, err)
		}
		if err := m.parseLedgerConsenter(); err != nil {
			return fmt.Errorf("%s.ledger_consenter: %v", at, err)
		}
		m.pool = x509.NewCertPool()
		for _, c := range m.CA {
			h := sha256.Sum256(c.Raw)
			if other, dup := cas[h]; dup && other != m.ID {
				return fmt.Errorf("%s.ca_certs: CA %q is also a CA of member %s; each member needs its own CA", at, c.Subject, other)
			}
			cas[h] = m.ID
			m.pool.AddCert(c)
		}
		if len(m.Admins) == 0 {
			return fmt.Errorf("%s.admins: at least one admin key is required", at)
		}
		keys := map[string]bool{}
		for j, ad := range m.Admins {
			if ad == nil {
				return fmt.Errorf("%s.admins[%d]: empty entry", at, j)
			}
			if !validID(ad.KeyID) {
				return fmt.Errorf("%s.admins[%d].key_id: %q is not a valid id", at, j, ad.KeyID)
			}
			if keys[ad.KeyID] {
				return fmt.Errorf("%s.admins[%d]: duplicate key_id %q", at, j, ad.KeyID)
			}
			keys[ad.KeyID] = true
			if err := ad.parse(); err != nil {
				return fmt.Errorf("%s.admins[%d] (%s): %v", at, j, ad.KeyID, err)
			}
		}
	}
	return nil
}

func (ad *Admin) parse() error {
	switch {
	case (ad.PublicKey == "") == (ad.Certificate == ""):
		return errors.New("set exactly one of public_key and certificate")
	case ad.PublicKey != "":
		blk, rest := pem.Decode([]byte(ad.PublicKey))
		if blk == nil || blk.Type != "PUBLIC KEY" || strings.TrimSpace(string(rest)) != "" {
			return errors.New("public_key: want exactly one PEM \"PUBLIC KEY\" block")
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return fmt.Errorf("public_key: %v", err)
		}
		ad.Key, ad.SPKI = k, sha256.Sum256(blk.Bytes)
	default:
		certs, err := parseCerts(ad.Certificate)
		if err != nil || len(certs) != 1 {
			return fmt.Errorf("certificate: want exactly one PEM certificate (%v)", err)
		}
		ad.Key, ad.SPKI, ad.Expires = certs[0].PublicKey, sha256.Sum256(certs[0].RawSubjectPublicKeyInfo), certs[0].NotAfter
	}
	if err := checkAdminKey(ad.Key); err != nil {
		return err
	}
	if ad.NotAfter != "" {
		t, err := time.Parse(time.RFC3339, ad.NotAfter)
		if err != nil {
			return fmt.Errorf("not_after: %q is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)", ad.NotAfter)
		}
		if ad.Expires.IsZero() || t.Before(ad.Expires) {
			ad.Expires = t
		}
	}
	return nil
}

func checkAdminKey(k any) error {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return errors.New("ECDSA admin keys must be P-256 or P-384")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return errors.New("RSA admin keys must have at least 2048 bits")
		}
	default:
		return fmt.Errorf("unsupported admin key type %T (want ECDSA, Ed25519 or RSA)", k)
	}
	return nil
}

func parseCerts(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q (want CERTIFICATE)", blk.Type)
		}
		if len(out) == maxCerts {
			return nil, fmt.Errorf("more than %d certificates", maxCerts)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("text that is not PEM after the certificates")
	}
	return out, nil
}

func parseCACerts(s string, required bool) ([]*x509.Certificate, error) {
	certs, err := parseCerts(s)
	if err != nil {
		return nil, err
	}
	if required && len(certs) == 0 {
		return nil, errors.New("at least one PEM CA certificate is required")
	}
	for i, c := range certs {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("certificate %d (%s) is not a CA certificate (basicConstraints CA:TRUE)", i+1, c.Subject)
		}
	}
	return certs, nil
}

func (d *Document) validateRelays() error {
	if len(d.Relays) == 0 {
		return errors.New("relays: at least one relay is required")
	}
	if len(d.Relays) > MaxRelays {
		return fmt.Errorf("relays: %d relays, the limit is %d", len(d.Relays), MaxRelays)
	}
	ids, addrs := map[string]bool{}, map[string]bool{}
	for i, r := range d.Relays {
		if r == nil {
			return fmt.Errorf("relays[%d]: empty entry", i)
		}
		at := fmt.Sprintf("relays[%d] (%s)", i, r.ID)
		if !validID(r.ID) {
			return fmt.Errorf("relays[%d].id: %q is not a valid id", i, r.ID)
		}
		if ids[r.ID] {
			return fmt.Errorf("%s: duplicate relay id", at)
		}
		ids[r.ID] = true
		host, port, err := net.SplitHostPort(r.Address)
		if err != nil || host == "" {
			return fmt.Errorf("%s.address: %q is not host:port", at, r.Address)
		}
		if _, err := ParsePortRange(port); err != nil || strings.Contains(port, "-") {
			return fmt.Errorf("%s.address: bad port %q", at, port)
		}
		if addrs[r.Address] {
			return fmt.Errorf("%s.address: %s is listed twice", at, r.Address)
		}
		addrs[r.Address] = true
		if r.SPKISHA256 == "" && r.CACerts == "" {
			return fmt.Errorf("%s: set spki_sha256 (pin) or ca_certs so members can authenticate the relay", at)
		}
		if r.SPKISHA256 != "" {
			if r.Pin, err = decodeSHA256Hex(r.SPKISHA256); err != nil {
				return fmt.Errorf("%s.spki_sha256: %v", at, err)
			}
		}
		if r.CA, err = parseCACerts(r.CACerts, false); err != nil {
			return fmt.Errorf("%s.ca_certs: %v", at, err)
		}
		if r.Operator != "" && d.member(r.Operator) == nil {
			return fmt.Errorf("%s.operator: %q is not a member", at, r.Operator)
		}
	}
	return nil
}

// decodeSHA256Hex decodes a SHA-256 written as 64 hex digits or as
// "sha256/<base64>" (the pin notation relays print).
func decodeSHA256Hex(s string) ([]byte, error) {
	var b []byte
	var err error
	if b64, ok := strings.CutPrefix(s, "sha256/"); ok {
		b, err = base64.StdEncoding.DecodeString(b64)
	} else {
		b, err = hex.DecodeString(s)
	}
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("%q is not a SHA-256: want 64 hex digits or sha256/<base64>", s)
	}
	return b, nil
}

func (d *Document) member(id string) *Member {
	for _, m := range d.Members {
		if m.ID == id {
			return m
		}
	}
	return nil
}

func (d *Document) validateSelector(s string) error {
	switch {
	case s == "*":
		return nil
	case strings.HasPrefix(s, "role:"):
		if !knownRoles[Role(s[5:])] {
			return fmt.Errorf("unknown role in %q (want role:consenter, role:observer, role:writer or role:reader)", s)
		}
		return nil
	case d.member(s) == nil:
		return fmt.Errorf("%q is not a member id, role:<role> or *", s)
	}
	return nil
}

func (d *Document) validateACL() error {
	if len(d.ACL) > MaxACLRules {
		return fmt.Errorf("acl: %d rules, the limit is %d", len(d.ACL), MaxACLRules)
	}
	for i, r := range d.ACL {
		if r == nil {
			return fmt.Errorf("acl[%d]: empty entry", i)
		}
		if len(r.From) == 0 || len(r.To) == 0 || len(r.Ports) == 0 {
			return fmt.Errorf("acl[%d]: from, to and ports are required (use \"*\" and \"1-65535\" for all)", i)
		}
		for _, s := range r.From {
			if err := d.validateSelector(s); err != nil {
				return fmt.Errorf("acl[%d].from: %v", i, err)
			}
		}
		for _, s := range r.To {
			if err := d.validateSelector(s); err != nil {
				return fmt.Errorf("acl[%d].to: %v", i, err)
			}
		}
	}
	return nil
}

func (d *Document) validateLedger() error {
	l := &d.Ledger
	switch {
	case len(l.Channels) > 0 && l.Channel != "":
		return fmt.Errorf("ledger.channel: %q is given together with ledger.channels; name every channel in ledger.channels and leave ledger.channel out", l.Channel)
	case len(l.Channels) == 0 && !channelRE.MatchString(l.Channel):
		return fmt.Errorf("ledger.channel: %q is not a Fabric channel name ([a-z][a-z0-9.-]*, at most 249)", l.Channel)
	}
	if err := validateBatchSize("ledger.batch_size", l.BatchSize); err != nil {
		return err
	}
	t, err := parseBatchTimeout("ledger.batch_timeout", l.BatchTimeout)
	if err != nil {
		return err
	}
	l.Timeout = t
	if len(l.Consenters) == 0 {
		return errors.New("ledger.consenters: at least one consenter is required")
	}
	listed := map[string]bool{}
	for _, id := range l.Consenters {
		m := d.member(id)
		switch {
		case m == nil:
			return fmt.Errorf("ledger.consenters: %q is not a member", id)
		case listed[id]:
			return fmt.Errorf("ledger.consenters: %q listed twice", id)
		case !m.HasRole(RoleConsenter):
			return fmt.Errorf("ledger.consenters: member %q lacks role consenter", id)
		}
		listed[id] = true
	}
	for _, m := range d.Members {
		if m.HasRole(RoleConsenter) && !listed[m.ID] {
			return fmt.Errorf("members (%s): has role consenter but is not in ledger.consenters", m.ID)
		}
	}
	return d.validateChannels(listed)
}

// maxChannels bounds ledger.channels.
const maxChannels = 64

// validateChannels checks ledger.channels; consenters are the members of
// ledger.consenters.
func (d *Document) validateChannels(consenters map[string]bool) error {
	chs := d.Ledger.Channels
	if len(chs) > maxChannels {
		return fmt.Errorf("ledger.channels: %d channels, at most %d", len(chs), maxChannels)
	}
	names := map[string]bool{}
	for i, c := range chs {
		at := fmt.Sprintf("ledger.channels[%d]", i)
		if c == nil {
			return fmt.Errorf("%s: empty entry", at)
		}
		if !channelRE.MatchString(c.Name) {
			return fmt.Errorf("%s.name: %q is not a Fabric channel name ([a-z][a-z0-9.-]*, at most 249)", at, c.Name)
		}
		if names[c.Name] {
			return fmt.Errorf("%s.name: channel %q listed twice", at, c.Name)
		}
		names[c.Name] = true
		in := map[string]bool{}
		for _, id := range c.Members {
			switch {
			case d.member(id) == nil:
				return fmt.Errorf("%s.members: %q is not a member", at, id)
			case in[id]:
				return fmt.Errorf("%s.members: %q listed twice", at, id)
			}
			in[id] = true
		}
		if len(c.Consenters) == 0 {
			return fmt.Errorf("%s.consenters: channel %q needs at least one consenter", at, c.Name)
		}
		seen := map[string]bool{}
		for _, id := range c.Consenters {
			switch {
			case !consenters[id]:
				return fmt.Errorf("%s.consenters: %q is not in ledger.consenters", at, id)
			case seen[id]:
				return fmt.Errorf("%s.consenters: %q listed twice", at, id)
			case len(c.Members) > 0 && !in[id]:
				return fmt.Errorf("%s.consenters: %q is not in the channel's members", at, id)
			}
			seen[id] = true
		}
		if c.BatchSize != nil {
			if err := validateBatchSize(at+".batch_size", *c.BatchSize); err != nil {
				return err
			}
		}
		c.Timeout = 0
		if c.BatchTimeout != "" {
			t, err := parseBatchTimeout(at+".batch_timeout", c.BatchTimeout)
			if err != nil {
				return err
			}
			c.Timeout = t
		}
	}
	return nil
}

func validateBatchSize(key string, b BatchSize) error {
	if b.MaxMessageCount < 1 || b.MaxMessageCount > 100000 {
		return fmt.Errorf("%s.max_message_count: %d is out of range 1..100000", key, b.MaxMessageCount)
	}
	if b.AbsoluteMaxBytes < 1<<10 || b.AbsoluteMaxBytes > 99<<20 {
		return fmt.Errorf("%s.absolute_max_bytes: %d is out of range 1024..%d (99 MiB)", key, b.AbsoluteMaxBytes, 99<<20)
	}
	if b.PreferredMaxBytes < 1 || b.PreferredMaxBytes > b.AbsoluteMaxBytes {
		return fmt.Errorf("%s.preferred_max_bytes: %d is out of range 1..absolute_max_bytes (%d)", key, b.PreferredMaxBytes, b.AbsoluteMaxBytes)
	}
	return nil
}

func parseBatchTimeout(key, s string) (time.Duration, error) {
	t, err := time.ParseDuration(s)
	if err != nil || t < time.Millisecond || t > 10*time.Minute {
		return 0, fmt.Errorf("%s: %q is not a duration in 1ms..10m (e.g. 2s)", key, s)
	}
	return t, nil
}

func (d *Document) validateRevocations() error {
	for i, rc := range d.Revocations.Certificates {
		if rc == nil {
			return fmt.Errorf("revocations.certificates[%d]: empty entry", i)
		}
		bySerial := rc.Member != "" || rc.Serial != ""
		if bySerial == (rc.SPKISHA256 != "") {
			return fmt.Errorf("revocations.certificates[%d]: set either member+serial or spki_sha256", i)
		}
		if bySerial {
			if d.member(rc.Member) == nil {
				return fmt.Errorf("revocations.certificates[%d].member: %q is not a member", i, rc.Member)
			}
			n, ok := new(big.Int).SetString(rc.Serial, 0)
			if !ok || n.Sign() < 0 {
				return fmt.Errorf("revocations.certificates[%d].serial: %q is not a decimal or 0x-hex serial number", i, rc.Serial)
			}
			rc.serial = n
			continue
		}
		var err error
		if rc.spki, err = decodeSHA256Hex(rc.SPKISHA256); err != nil {
			return fmt.Errorf("revocations.certificates[%d].spki_sha256: %v", i, err)
		}
	}
	for i, a := range d.Revocations.AdminKeys {
		// A revoked key may already be gone from the admins list; the
		// member must exist only if the key is still listed.
		if a == nil || !validID(a.Member) || !validID(a.KeyID) {
			return fmt.Errorf("revocations.admin_keys[%d]: want member and key_id", i)
		}
	}
	return nil
}

func (d *Document) validateAmendment() error {
	n := len(d.Members)
	check := func(what string, t Threshold) error {
		if t.kind == thCount && t.num > n {
			return fmt.Errorf("%s: %d votes can never be reached by %d members", what, t.num, n)
		}
		return nil
	}
	if err := check("amendment.default", d.Amendment.Default); err != nil {
		return err
	}
	for k, t := range d.Amendment.Rules {
		if !knownKind(k) {
			return fmt.Errorf("amendment.rules: unknown change kind %q (known: %s)", k, kindList())
		}
		if err := check("amendment.rules."+string(k), t); err != nil {
			return err
		}
		if t.Need(n) < d.Amendment.Default.Need(n) {
			return fmt.Errorf("amendment.rules.%s: %s (%d of %d members) is weaker than the default %s (%d); per-kind rules can only be stricter",
				k, t, t.Need(n), n, d.Amendment.Default, d.Amendment.Default.Need(n))
		}
	}
	return nil
}

func kindList() string {
	s := make([]string, len(AllKinds))
	for i, k := range AllKinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// MarshalDocument renders d as YAML, for tools that generate policies (such
// as a demo or an installer), and checks that the result parses and
// validates. Derived fields (yaml:"-") are ignored. Edit the returned bytes
// freely: from then on, the bytes are the policy.
func MarshalDocument(d *Document) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := parseDocument(b.Bytes()); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// maxLedgerEndpoints bounds members[].ledger_endpoints.
const maxLedgerEndpoints = 8

// checkEndpoints validates a list of client-facing "host:port" addresses.
func checkEndpoints(eps []string) error {
	if len(eps) > maxLedgerEndpoints {
		return fmt.Errorf("%d endpoints, at most %d", len(eps), maxLedgerEndpoints)
	}
	seen := map[string]bool{}
	for _, ep := range eps {
		h, ps, err := net.SplitHostPort(ep)
		if err != nil || h == "" || strings.ContainsAny(h, " /") {
			return fmt.Errorf("%q is not host:port (e.g. 192.0.2.10:7050 or ledger.example.com:7050)", ep)
		}
		if p, err := strconv.ParseUint(ps, 10, 16); err != nil || p == 0 {
			return fmt.Errorf("%q: port %q is not 1..65535", ep, ps)
		}
		if seen[ep] {
			return fmt.Errorf("%q listed twice", ep)
		}
		seen[ep] = true
	}
	return nil
}

// maxCRLs bounds members[].crls.
const maxCRLs = maxCerts

// crlHint says how a member makes a CRL that memberd and Fabric accept.
const crlHint = "make it with the member CA's key, e.g. openssl ca -gencrl whose crl_extensions section holds authorityKeyIdentifier = keyid:always (docs/policy.md, \"Revoking with a CRL\")"

// parseCRLs checks the member's CRLs: each parses, is signed by one of its
// CA certificates (signature only, as a Fabric MSP checks it; key usage and
// dates are not read) and names that CA by authority key identifier, which
// a Fabric MSP needs to match a CRL to a certificate's issuer (and without
// which it refuses every identity of the org). At most one CRL per CA.
func (m *Member) parseCRLs(at string) error {
	rest := []byte(m.CRLs)
	byCA := map[*x509.Certificate]int{}
	for i := 0; ; i++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "X509 CRL" {
			return fmt.Errorf("%s.crls[%d]: a PEM %q block; want \"X509 CRL\" blocks only", at, i, blk.Type)
		}
		if i == maxCRLs {
			return fmt.Errorf("%s.crls: more than %d CRLs; list only the newest CRL of each CA", at, maxCRLs)
		}
		l, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return fmt.Errorf("%s.crls[%d]: not an X.509 CRL: %v", at, i, err)
		}
		var ca *x509.Certificate
		for _, c := range m.CA {
			if c.CheckSignature(l.SignatureAlgorithm, l.RawTBSRevocationList, l.Signature) == nil {
				ca = c
				break
			}
		}
		if ca == nil {
			return fmt.Errorf("%s.crls[%d] (issuer %q): not signed by any of the member's ca_certs; %s", at, i, l.Issuer, crlHint)
		}
		if len(l.AuthorityKeyId) == 0 {
			return fmt.Errorf("%s.crls[%d] (issuer %q): no authority key identifier; a Fabric MSP with such a CRL refuses every identity of the org: %s", at, i, l.Issuer, crlHint)
		}
		if !bytes.Equal(l.AuthorityKeyId, ca.SubjectKeyId) {
			return fmt.Errorf("%s.crls[%d] (issuer %q): authority key identifier %x is not the subject key identifier %x of the CA that signed it, so Fabric peers would never apply it; %s",
				at, i, l.Issuer, l.AuthorityKeyId, ca.SubjectKeyId, crlHint)
		}
		if j, dup := byCA[ca]; dup {
			return fmt.Errorf("%s.crls[%d]: CA %q already has crls[%d]; list only the newest CRL of each CA", at, i, ca.Subject, j)
		}
		byCA[ca] = i
		m.CRL = append(m.CRL, &CRL{List: l, CA: ca})
	}
	if strings.TrimSpace(string(rest)) != "" {
		return fmt.Errorf("%s.crls: text that is not PEM after the CRLs", at)
	}
	return nil
}

// parseLedgerConsenter checks the member's consenter entry: one
// certificate, issued by its TLS CA (or CA). Validity dates are not
// checked here (the channel config carries the certificate as it is).
func (m *Member) parseLedgerConsenter() error {
	lc := m.LedgerConsenter
	if lc == nil {
		return nil
	}
	if !m.HasRole(RoleConsenter) {
		return errors.New("only a member with role consenter has a consenter entry")
	}
	blk, rest := pem.Decode([]byte(lc.TLSCert))
	if blk == nil || blk.Type != "CERTIFICATE" || strings.TrimSpace(string(rest)) != "" {
		return errors.New("tls_cert: want exactly one PEM \"CERTIFICATE\" block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("tls_cert: %v", err)
	}
	cas, which := m.TLSCA, "tls_ca_certs"
	if len(cas) == 0 {
		cas, which = m.CA, "ca_certs"
	}
	roots := x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: c.NotBefore.Add(time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("tls_cert %q is not issued by the member's %s: %v", c.Subject.CommonName, which, err)
	}
	lc.Cert = c
	return nil
}

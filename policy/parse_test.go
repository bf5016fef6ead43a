package policy_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

func TestParseGenesisAndAccessors(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	if g.Version() != 1 || !g.Previous().IsZero() || g.Consortium() != "test" {
		t.Fatalf("version %d previous %s consortium %q", g.Version(), g.Previous(), g.Consortium())
	}
	if g.Hash() != policy.HashDocument(g.DocumentBytes()) {
		t.Fatal("hash is not the hash of the document bytes")
	}
	if m := g.Member("m2"); m == nil || m.MSPID != "m2MSP" || m.Addr != netip.MustParseAddr("100.64.0.2") {
		t.Fatalf("member m2: %+v", m)
	}
	if g.Member("nope") != nil || g.MemberByMSPID("m3MSP").ID != "m3" || g.MemberByAddr(netip.MustParseAddr("100.64.0.1")).ID != "m1" {
		t.Fatal("lookups")
	}
	if cs := g.Consenters(); len(cs) != 3 || cs[0].ID != "m1" {
		t.Fatalf("consenters %v", cs)
	}
	if rs := g.Relays(); len(rs) != 2 || rs[0].Address != "127.0.0.1:4431" || len(rs[0].Pin) != 32 {
		t.Fatalf("relays %+v", rs)
	}
	if l := g.Ledger(); l.Channel != "trade" || l.Timeout.Seconds() != 2 || l.BatchSize.MaxMessageCount != 500 {
		t.Fatalf("ledger %+v", l)
	}
	// Signatures do not change the document or its hash.
	s := c.Sign(t, g, "m1", "m2")
	if s.Hash() != g.Hash() || len(s.Signatures()) != 2 || len(g.Signatures()) != 0 {
		t.Fatal("signing changed the hash or the original")
	}
	back := policytest.MustParse(t, s.Marshal())
	if !bytes.Equal(back.Marshal(), s.Marshal()) || back.Hash() != g.Hash() {
		t.Fatal("bundle round trip")
	}
	if !bytes.HasPrefix(s.Marshal(), g.DocumentBytes()) {
		t.Fatal("the bundle must start with the exact document bytes")
	}
}

func TestAllowed(t *testing.T) {
	c := policytest.New(t, 3)
	d := c.Template
	d.Members[2].Roles = []policy.Role{policy.RoleObserver}
	d.Ledger.Consenters = []string{"m1", "m2"}
	d.ACL = []*policy.ACLRule{
		{From: []string{"role:consenter"}, To: []string{"role:consenter"}, Ports: []policy.PortRange{{Lo: 7050, Hi: 7050}}},
		{From: []string{"m3"}, To: []string{"m1"}, Ports: []policy.PortRange{{Lo: 8000, Hi: 8010}}},
	}
	g := c.Genesis(t)
	for _, x := range []struct {
		from, to string
		port     uint16
		want     bool
	}{
		{"m1", "m2", 7050, true}, {"m2", "m1", 7050, true}, {"m1", "m2", 7051, false},
		{"m3", "m1", 8005, true}, {"m3", "m1", 8011, false}, {"m1", "m3", 8005, false},
		{"m3", "m2", 7050, false}, {"x", "m1", 7050, false}, {"m1", "x", 7050, false},
	} {
		if got := g.Allowed(x.from, x.to, x.port); got != x.want {
			t.Errorf("Allowed(%s,%s,%d) = %v", x.from, x.to, x.port, got)
		}
	}
	if !g.AllowedPair("m1", "m3") || !g.AllowedPair("m3", "m1") || g.AllowedPair("m2", "m3") {
		t.Error("AllowedPair")
	}
}

func TestMemberForCertificate(t *testing.T) {
	c := policytest.New(t, 2)
	leaf1 := c.CAs["m1"].Issue(t, "node.m1").Cert
	leaf2 := c.CAs["m2"].Issue(t, "node.m2").Cert
	revoked := c.CAs["m2"].Issue(t, "old.m2").Cert
	c.Template.Revocations.Certificates = []*policy.RevokedCert{{Member: "m2", Serial: "0x" + revoked.SerialNumber.Text(16)}}
	g := c.Genesis(t)
	outsider := testpki.NewCA(t, "outsider CA")
	leafX := outsider.Issue(t, "x").Cert

	if m, err := g.MemberForCertificate([][]*x509.Certificate{{leaf1}}); err != nil || m.ID != "m1" {
		t.Fatalf("m1 leaf: %v %v", m, err)
	}
	if m, err := g.MemberForCertificate([][]*x509.Certificate{{leafX}, {leaf2, c.CAs["m2"].Cert}}); err != nil || m.ID != "m2" {
		t.Fatalf("second chain: %v %v", m, err)
	}
	if _, err := g.MemberForCertificate([][]*x509.Certificate{{revoked}}); !errors.Is(err, policy.ErrNotMember) || !errors.Is(err, policy.ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	if _, err := g.MemberForCertificate([][]*x509.Certificate{{leafX}}); !errors.Is(err, policy.ErrNotMember) {
		t.Fatalf("outsider: %v", err)
	}
	if _, err := g.MemberForCertificate(nil); !errors.Is(err, policy.ErrNotMember) {
		t.Fatalf("none: %v", err)
	}
	if err := g.VerifyMemberCertificate("m1", []*x509.Certificate{leaf1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := g.VerifyMemberCertificate("m2", []*x509.Certificate{leaf1}, time.Now()); !errors.Is(err, policy.ErrNotMember) {
		t.Fatalf("m1's certificate as m2: %v", err)
	}
	if err := g.VerifyMemberCertificate("m1", []*x509.Certificate{leaf1}, time.Now().Add(60*24*time.Hour)); !errors.Is(err, policy.ErrNotMember) {
		t.Fatalf("expired certificate: %v", err)
	}
	// Revocation by key: a new policy revoking leaf1's SPKI.
	v2 := c.Next(t, g, func(d *policy.Document) {
		d.Revocations.Certificates = append(d.Revocations.Certificates, &policy.RevokedCert{SPKISHA256: spkiHex(leaf1)})
	})
	if _, err := v2.MemberForCertificate([][]*x509.Certificate{{leaf1}}); !errors.Is(err, policy.ErrRevoked) {
		t.Fatalf("revoked by SPKI: %v", err)
	}
	// The relay pin notation sha256/<base64> is accepted as well as hex.
	v3 := c.Next(t, v2, func(d *policy.Document) {
		d.Revocations.Certificates = []*policy.RevokedCert{{SPKISHA256: "sha256/" + spkiB64(leaf2)}}
	})
	if _, err := v3.MemberForCertificate([][]*x509.Certificate{{leaf2}}); !errors.Is(err, policy.ErrRevoked) {
		t.Fatalf("revoked by SPKI (base64 pin): %v", err)
	}
}

func TestMarshalDocument(t *testing.T) {
	c := policytest.New(t, 2)
	b, err := policy.MarshalDocument(c.Template)
	if err != nil {
		t.Fatal(err)
	}
	p := policytest.MustParse(t, b)
	if !policy.Compare(c.Genesis(t), p).Empty() {
		t.Fatal("MarshalDocument changed the meaning")
	}
	c.Template.Relays = nil
	if _, err := policy.MarshalDocument(c.Template); !errors.Is(err, policy.ErrMalformed) {
		t.Fatalf("invalid document marshalled: %v", err)
	}
}

// TestParseRejects: every field is validated, with a message that names it.
func TestParseRejects(t *testing.T) {
	c := policytest.New(t, 3)
	good := policytest.Render(t, c.Template)
	notCA := c.CAs["m1"].Issue(t, "leaf").Cert
	edit := func(f func(d *policy.Document)) []byte {
		cc := policytest.MustParse(t, good)
		return c.NextDocument(t, cc, func(d *policy.Document) { d.Version, d.Previous = 1, ""; f(d) })
	}
	text := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("fixture lacks %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		// The decoder's messages name the line of the offending key.
		{"unknown top-level key", append(append([]byte{}, good...), "colour: blue\n"...), fmt.Sprintf("line %d: field colour not found", bytes.Count(good, []byte("\n"))+1)},
		{"unknown nested key", text("      msp_id: m1MSP\n", "      msp_id: m1MSP\n      mps_id: typo\n"), fmt.Sprintf("line %d: field mps_id not found", lineOf(good, "      msp_id: m1MSP\n")+1)},
		{"duplicate key", text("consortium: test\n", "consortium: test\nconsortium: again\n"), fmt.Sprintf("line %d: mapping key \"consortium\" already defined at line %d", lineOf(good, "consortium: test\n")+1, lineOf(good, "consortium: test\n"))},
		{"two documents", append(append([]byte{}, good...), "---\nformat: x\n"...), "exactly one YAML document"},
		{"anchor", text("description: test consortium\n", "description: &d test consortium\n"), "anchors and aliases"},
		{"wrong format", edit(func(d *policy.Document) { d.Format = "v0" }), "format"},
		{"version 0", edit(func(d *policy.Document) { d.Version = 0 }), "version"},
		{"genesis with previous", edit(func(d *policy.Document) { d.Previous = policy.HashDocument(nil).String() }), "genesis"},
		{"v2 without previous", edit(func(d *policy.Document) { d.Version = 2 }), "previous"},
		{"no members", edit(func(d *policy.Document) { d.Members = nil }), "at least one member"},
		{"duplicate member", edit(func(d *policy.Document) { d.Members[1].ID = "m1" }), "duplicate member id"},
		{"bad member id", edit(func(d *policy.Document) { d.Members[1].ID = "m 2" }), "not a valid id"},
		{"duplicate msp", edit(func(d *policy.Document) { d.Members[1].MSPID = "m1MSP" }), "used by another member"},
		{"duplicate overlay ip", edit(func(d *policy.Document) { d.Members[1].OverlayIP = "100.64.0.1" }), "also the address of member m1"},
		{"overlay ip outside prefix", edit(func(d *policy.Document) { d.Members[1].OverlayIP = "10.0.0.1" }), "outside overlay_prefix"},
		{"bad overlay ip", edit(func(d *policy.Document) { d.Members[1].OverlayIP = "nope" }), "overlay_ip"},
		{"unknown role", edit(func(d *policy.Document) { d.Members[0].Roles = append(d.Members[0].Roles, "king") }), "unknown role"},
		{"no CA", edit(func(d *policy.Document) { d.Members[0].CACerts = "" }), "at least one PEM CA certificate"},
		{"CA is not PEM", edit(func(d *policy.Document) { d.Members[0].CACerts = "garbage" }), "ca_certs"},
		{"CA is a leaf", edit(func(d *policy.Document) { d.Members[0].CACerts = pemOf(notCA) }), "not a CA certificate"},
		{"shared CA", edit(func(d *policy.Document) { d.Members[1].CACerts = d.Members[0].CACerts }), "each member needs its own CA"},
		{"ledger endpoint without port", edit(func(d *policy.Document) { d.Members[0].LedgerEndpoints = []string{"10.0.0.5"} }), "ledger_endpoints: \"10.0.0.5\" is not host:port"},
		{"ledger endpoint port 0", edit(func(d *policy.Document) { d.Members[0].LedgerEndpoints = []string{"10.0.0.5:0"} }), "not 1..65535"},
		{"ledger endpoint twice", edit(func(d *policy.Document) { d.Members[0].LedgerEndpoints = []string{"a:1", "a:1"} }), "listed twice"},
		{"consenter TLS cert of another CA", edit(func(d *policy.Document) {
			d.Members[1].LedgerConsenter = &policy.LedgerConsenter{TLSCert: pemOf(notCA)}
		}), "members[1] (m2).ledger_consenter: tls_cert \"leaf\" is not issued by the member's ca_certs"},
		{"consenter TLS cert not PEM", edit(func(d *policy.Document) { d.Members[0].LedgerConsenter = &policy.LedgerConsenter{TLSCert: "x"} }), "want exactly one PEM \"CERTIFICATE\" block"},
		{"consenter entry of a writer", edit(func(d *policy.Document) {
			d.Members[0].Roles = []policy.Role{policy.RoleWriter}
			d.Ledger.Consenters = d.Ledger.Consenters[1:]
			d.Members[0].LedgerConsenter = &policy.LedgerConsenter{TLSCert: pemOf(notCA)}
		}), "only a member with role consenter"},
		{"no admins", edit(func(d *policy.Document) { d.Members[0].Admins = nil }), "at least one admin"},
		{"admin without key", edit(func(d *policy.Document) { d.Members[0].Admins[0].PublicKey = "" }), "exactly one of public_key and certificate"},
		{"admin bad not_after", edit(func(d *policy.Document) { d.Members[0].Admins[0].NotAfter = "tomorrow" }), "RFC 3339"},
		{"no relays", edit(func(d *policy.Document) { d.Relays = nil }), "at least one relay"},
		{"relay bad address", edit(func(d *policy.Document) { d.Relays[0].Address = "nohost" }), "host:port"},
		{"relay without pin", edit(func(d *policy.Document) { d.Relays[0].SPKISHA256 = "" }), "spki_sha256"},
		{"relay bad pin", edit(func(d *policy.Document) { d.Relays[0].SPKISHA256 = "abcd" }), "64 hex digits"},
		{"acl unknown member", edit(func(d *policy.Document) { d.ACL[0].From = []string{"m9"} }), "acl[0].from: \"m9\" is not a member id"},
		{"acl unknown role", edit(func(d *policy.Document) { d.ACL[0].To = []string{"role:king"} }), "unknown role"},
		{"acl bad port", text("- 7050\n", "- 70000\n"), "bad port"},
		{"acl reversed range", text("7051-7059", "7059-7051"), "bad port"},
		{"bad channel", edit(func(d *policy.Document) { d.Ledger.Channel = "Trade" }), "ledger.channel"},
		{"batch count 0", edit(func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 0 }), "max_message_count"},
		{"preferred above absolute", edit(func(d *policy.Document) { d.Ledger.BatchSize.PreferredMaxBytes = 20 << 20 }), "preferred_max_bytes"},
		{"absolute too large", edit(func(d *policy.Document) { d.Ledger.BatchSize.AbsoluteMaxBytes = 200 << 20 }), "absolute_max_bytes"},
		{"bad timeout", edit(func(d *policy.Document) { d.Ledger.BatchTimeout = "forever" }), "batch_timeout"},
		{"consenter not a member", edit(func(d *policy.Document) { d.Ledger.Consenters = append(d.Ledger.Consenters, "m9") }), "not a member"},
		{"consenter without role", edit(func(d *policy.Document) { d.Members[2].Roles = []policy.Role{policy.RoleWriter} }), "lacks role consenter"},
		{"consenter role not listed", edit(func(d *policy.Document) { d.Ledger.Consenters = d.Ledger.Consenters[:2] }), "not in ledger.consenters"},
		{"revocation of unknown member", edit(func(d *policy.Document) {
			d.Revocations.Certificates = []*policy.RevokedCert{{Member: "m9", Serial: "1"}}
		}), "not a member"},
		{"revocation bad serial", edit(func(d *policy.Document) {
			d.Revocations.Certificates = []*policy.RevokedCert{{Member: "m1", Serial: "x1"}}
		}), "serial"},
		{"threshold above members", edit(func(d *policy.Document) { d.Amendment.Default = policy.Count(4) }), "can never be reached"},
		{"unknown change kind", edit(func(d *policy.Document) {
			d.Amendment.Rules = map[policy.ChangeKind]policy.Threshold{"coup": policy.Unanimous()}
		}), "unknown change kind"},
		{"per-kind rule weaker than the default", edit(func(d *policy.Document) {
			d.Amendment.Rules = map[policy.ChangeKind]policy.Threshold{policy.KindACLChanged: policy.Count(1)}
		}), "can only be stricter"},
		{"bad threshold", text("consortium: test\n", "consortium: test\namendment:\n  default: most\n"), "bad threshold"},
		{"not UTF-8", append([]byte("format: \xff\n"), good...), "UTF-8"},
		{"no trailing newline", good[:len(good)-1], "end with a newline"},
		{"empty", nil, "newline"},
	}
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) {
			_, err := policy.Parse(x.in)
			if !errors.Is(err, policy.ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), x.want) {
				t.Fatalf("error %q lacks %q", err, x.want)
			}
		})
	}
}

func TestBundleTrailer(t *testing.T) {
	c := policytest.New(t, 2)
	s := c.Sign(t, c.Genesis(t), "m1", "m2").Marshal()
	doc := c.Genesis(t).DocumentBytes()
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"truncated signature line", s[:len(s)-5], "does not end with a newline"},
		{"junk after marker", append(append([]byte{}, s...), "hello\n"...), "signature line 3"},
		{"bad base64", append(append([]byte{}, s...), "#sig m1 a9 !!!\n"...), "not base64"},
		{"marker inside the document", append([]byte("#--- memberd signatures v1 ---x\n"), doc...), "line of its own"},
		{"signatures without document", []byte("#--- memberd signatures v1 ---\n#sig m1 a1 AAAA\n"), "no document"},
		{"too large", bytes.Repeat([]byte("#\n"), policy.MaxBundleSize), "too large"},
	}
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) {
			_, err := policy.Parse(x.in)
			if err == nil || !strings.Contains(err.Error(), x.want) {
				t.Fatalf("err = %v, want %q", err, x.want)
			}
		})
	}
	// A duplicate line is parsed (Verify rejects it as a duplicate vote).
	dup := append(append([]byte{}, s...), s[bytes.LastIndex(s[:len(s)-1], []byte("\n"))+1:]...)
	p, err := policy.Parse(dup)
	if err != nil || len(p.Signatures()) != 3 {
		t.Fatalf("duplicate line: %v", err)
	}
	g := c.Genesis(t)
	cand := c.Next(t, g, describe("x"), "m1")
	raw := cand.Marshal()
	raw = append(raw, raw[bytes.LastIndex(raw[:len(raw)-1], []byte("\n"))+1:]...)
	r := policy.Check(g, policytest.MustParse(t, raw), now)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "duplicate signature") || len(r.Votes) != 1 {
		t.Fatalf("duplicate vote: %v", r.Err)
	}
}

func TestDiff(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	v2 := c.Next(t, g, func(d *policy.Document) {
		d.Members = append(d.Members[:2], c.NewMember(t, "m4"))
		d.Ledger.Consenters = []string{"m1", "m2"}
		d.Members[0].Name = "Renamed"
		d.Members[1].LedgerEndpoints = []string{"ledger.m2.example:7050"}
		tlsCert := c.CAs["m1"].Issue(t, "m1 tls").Cert
		d.Members[0].LedgerConsenter = &policy.LedgerConsenter{TLSCert: pemOf(tlsCert), Port: 7053}
		d.Members[1].Admins = append(d.Members[1].Admins, c.NewAdmin(t, "m2", "a2"))
		d.Relays[1].Address = "relay2.example.test:8443"
		d.Ledger.BatchTimeout = "1s"
		d.Amendment.Default = policy.Unanimous()
		d.Description = "v2"
	})
	df := policy.Compare(g, v2)
	want := []policy.ChangeKind{policy.KindMemberAdded, policy.KindMemberRemoved, policy.KindMemberChanged, policy.KindAdminsChanged,
		policy.KindRelaysChanged, policy.KindLedgerChanged, policy.KindConsentersChanged, policy.KindAmendmentChanged, policy.KindMetadataChanged}
	if len(df.Kinds) != len(want) {
		t.Fatalf("kinds %v, want %v", df.Kinds, want)
	}
	for i := range want {
		if df.Kinds[i] != want[i] {
			t.Fatalf("kinds %v, want %v", df.Kinds, want)
		}
	}
	s := df.String()
	for _, w := range []string{"+ member m4", "- member m3", "~ member m1: name, ledger_consenter", "~ member m2: ledger_endpoints", "~ admins of m2: +a2", "~ relay r2", "~ ledger batch_timeout", "- consenter m3", "~ amendment rules", "~ description"} {
		if !strings.Contains(s, w) {
			t.Errorf("diff text lacks %q:\n%s", w, s)
		}
	}
	if !policy.Compare(g, g).Empty() {
		t.Error("self diff not empty")
	}
}

// TestDocsExample: the complete example in docs/policy.md parses and means
// what the document says.
func TestDocsExample(t *testing.T) {
	b, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := bytes.Cut(b, []byte("```yaml\n"))
	doc, _, ok2 := bytes.Cut(rest, []byte("```\n"))
	if !ok || !ok2 {
		t.Fatal("no yaml block in docs/policy.md")
	}
	p, err := policy.Parse(doc)
	if err != nil {
		t.Fatalf("docs example: %v", err)
	}
	if p.Version() != 1 || len(p.Members()) != 3 || len(p.Consenters()) != 2 {
		t.Fatalf("docs example: version %d, %d members", p.Version(), len(p.Members()))
	}
	if !p.Allowed("initech", "acme", 9444) || p.Allowed("acme", "initech", 9444) || !p.Allowed("initech", "globex", 7050) || p.Allowed("initech", "globex", 7051) {
		t.Fatal("docs example ACL")
	}
	if r := policy.Compare(nil, p); len(r.MembersAdded) != 3 {
		t.Fatal("compare from nothing")
	}
}

// lineOf is the 1-based line on which sub first starts in b (0 if absent).
func lineOf(b []byte, sub string) int {
	i := bytes.Index(b, []byte(sub))
	if i < 0 {
		return 0
	}
	return bytes.Count(b[:i], []byte("\n")) + 1
}

package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// softAdmin makes a P-256 key file and registers it as admin member/a1.
func policySoftAdmin(t *testing.T, c *policytest.Consortium, dir, member string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalECPrivateKey(k)
	path := filepath.Join(dir, member+".pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Template.Members {
		if m.ID == member {
			m.Admins = []*policy.Admin{c.AddAdminKey(t, member, "a1", k)}
		}
	}
	return "file:" + path
}

func policyWriteFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func policyExpect(t *testing.T, code int, out string, wantCode int, wants ...string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("exit %d, want %d; output:\n%s", code, wantCode, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("output lacks %q:\n%s", w, out)
		}
	}
}

// TestPolicyCLIWorkflow: propose, diff, verify (refused), sign by two
// admins, verify (ok), genesis pin, and usage errors.
func TestPolicyCLIWorkflow(t *testing.T) {
	dir := t.TempDir()
	c := policytest.New(t, 3)
	keys := map[string]string{}
	for _, m := range []string{"m1", "m2", "m3"} {
		keys[m] = policySoftAdmin(t, c, dir, m)
	}
	g := c.Genesis(t)
	v1, v2 := filepath.Join(dir, "v1.yaml"), filepath.Join(dir, "v2.yaml")
	policyWriteFile(t, v1, g.Marshal())
	policyWriteFile(t, v2, c.NextDocument(t, g, func(d *policy.Document) { d.Members = append(d.Members, c.NewMember(t, "m4")) }))

	code, out, _ := run(t, "policy", "show", v1)
	policyExpect(t, code, out, ExitOK, "consortium test, version 1", g.Hash().String(), "members (3)", "m1", "relays (2)", "ledger: channel trade", "amendment: default majority")

	code, out, _ = run(t, "policy", "diff", v1, v2)
	policyExpect(t, code, out, ExitOK, "version 1 -> 2: member_added", "+ member m4", "needs 2 of 3 member votes")

	// A member's CRL shows in 'policy show' and in 'policy diff'.
	lost := c.CAs["m2"].Issue(t, "lost").Cert
	withCRL := filepath.Join(dir, "v2-crl.yaml")
	policyWriteFile(t, withCRL, c.NextDocument(t, g, func(d *policy.Document) { d.Members[1].CRLs = c.CAs["m2"].CRL(t, 1, lost) }))
	code, out, _ = run(t, "policy", "show", withCRL)
	policyExpect(t, code, out, ExitOK, "crl(m2 CA)=1 revoked")
	code, out, _ = run(t, "policy", "diff", v1, withCRL)
	policyExpect(t, code, out, ExitOK, "member_changed", "revocations_changed", "~ member m2: crls", "serial "+lost.SerialNumber.String())

	code, out, errb := run(t, "policy", "verify", "--current", v1, v2)
	policyExpect(t, code, out+errb, ExitRuntime, "REFUSED", "changes:  member_added", "votes:    0", "missing:  3 [m1, m2, m3]", "needs 2 of 3")

	code, out, errb = run(t, "policy", "sign", "--key", keys["m1"], v2)
	policyExpect(t, code, out+errb, ExitUsage, "--insecure-file-key")

	code, out, errb = run(t, "policy", "sign", "--key", keys["m1"], "--insecure-file-key", "--current", v1, v2)
	policyExpect(t, code, out+errb, ExitOK, "as m1/a1", "votes so far: 1 of 2 needed")

	code, out, errb = run(t, "policy", "verify", "--current", v1, v2)
	policyExpect(t, code, out+errb, ExitRuntime, "votes:    1 [m1]", "missing:  2 [m2, m3]")

	code, out, errb = run(t, "policy", "sign", "--key", keys["m2"], "--insecure-file-key", "--member", "m2", "--key-id", "a1", v2)
	policyExpect(t, code, out+errb, ExitOK, "as m2/a1; 2 signature(s)")

	code, out, errb = run(t, "policy", "verify", "--current", v1, v2)
	policyExpect(t, code, out+errb, ExitOK, "version 1 -> 2 OK", "votes:    2 [m1, m2]")
	code, out, errb = run(t, "policy", "verify", "--genesis", g.Hash().String(), v1, v2)
	policyExpect(t, code, out+errb, ExitOK, "matches the pinned genesis", "version 1 -> 2 OK")
	code, out, errb = run(t, "policy", "verify", "--genesis", policy.HashDocument(nil).String(), v1)
	policyExpect(t, code, out+errb, ExitRuntime, "REFUSED")

	// The signed file is the same document bytes plus signature lines, and
	// an appliance's watcher would accept it.
	b, _ := os.ReadFile(v2)
	p, err := policy.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Verify(g, p); err != nil {
		t.Fatalf("library verify of CLI-signed bundle: %v", err)
	}

	// A key that is no admin, and a malformed file.
	stranger := policySoftAdmin(t, policytest.New(t, 1), dir, "zz")
	code, out, errb = run(t, "policy", "sign", "--key", stranger, "--insecure-file-key", v2)
	policyExpect(t, code, out+errb, ExitUsage, "not an admin key")
	// --config-block: with --admin-cert only, and that certificate must be
	// for the signing key (tested end to end with a stock peer in
	// test/consortium TestPolicyConfigBlock).
	code, out, errb = run(t, "policy", "sign", "--key", keys["m3"], "--insecure-file-key", "--config-block", v1, v2)
	policyExpect(t, code, out+errb, ExitUsage, "give both --config-block and --admin-cert")
	css := map[string]channelconfig.Consenter{}
	for _, m := range g.Consenters() {
		cert := c.CAs[m.ID].Issue(t, m.ID+"-tls").Cert
		pemTLS := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
		css[m.ID] = channelconfig.Consenter{ClientTLSCert: pemTLS, ServerTLSCert: pemTLS}
	}
	cc, err := channelconfig.FromPolicy(g, css)
	if err != nil {
		t.Fatal(err)
	}
	gb, err := channelconfig.GenesisBlock(cc, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	gbRaw, err := block.Marshal(gb)
	if err != nil {
		t.Fatal(err)
	}
	genesisBlock, otherAdmin := filepath.Join(dir, "genesis.block"), filepath.Join(dir, "other-admin.pem")
	policyWriteFile(t, genesisBlock, gbRaw)
	oc := c.CAs["m3"].Issue(t, "admin3", testpki.OU(channelconfig.AdminOU)).Cert
	policyWriteFile(t, otherAdmin, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: oc.Raw}))
	code, out, errb = run(t, "policy", "sign", "--key", keys["m3"], "--insecure-file-key", "--config-block", genesisBlock, "--admin-cert", otherAdmin, v2)
	policyExpect(t, code, out+errb, ExitRuntime, "is not for this key")

	bad := filepath.Join(dir, "bad.yaml")
	policyWriteFile(t, bad, []byte("format: memberd-policy/v1\nsurprise: 1\n"))
	code, out, errb = run(t, "policy", "show", bad)
	policyExpect(t, code, out+errb, ExitUsage, bad, "field surprise not found")
	code, _, errb = run(t, "policy", "verify", "--current", v1, "--genesis", g.Hash().String(), v2)
	policyExpect(t, code, errb, ExitUsage, "only one of")
	code, _, errb = run(t, "policy", "push")
	policyExpect(t, code, errb, ExitUsage, "accepts 1 arg")
}

// TestPolicySignWithSoftHSM: an admin key in a real SoftHSM2 token signs a
// bundle through 'memberd policy sign --key pkcs11:...'.
func TestPolicySignWithSoftHSM(t *testing.T) {
	tok := hsmtest.NewToken(t, "admin-m1")
	s := tok.NewKey(t, "policy-admin")
	dir := t.TempDir()
	c := policytest.New(t, 2)
	c.Template.Members[0].Admins = []*policy.Admin{c.AddAdminKey(t, "m1", "hsm1", s)}
	g := c.Genesis(t)
	v1, v2 := filepath.Join(dir, "v1.yaml"), filepath.Join(dir, "v2.yaml")
	policyWriteFile(t, v1, g.Marshal())
	policyWriteFile(t, v2, c.NextDocument(t, g, func(d *policy.Document) { d.Description = "signed in an HSM" }))

	code, out, errb := run(t, "policy", "sign", "--key", tok.KeyURI("policy-admin"), "--current", v1, v2)
	policyExpect(t, code, out+errb, ExitOK, "as m1/hsm1", "votes so far: 1 of 2 needed")
	b, _ := os.ReadFile(v2)
	p := policytest.MustParse(t, b)
	p = c.Sign(t, p, "m2")
	if _, err := policy.Verify(g, p); err != nil {
		t.Fatalf("HSM signature does not verify: %v", err)
	}
}

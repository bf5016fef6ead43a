package app

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testenv"
)

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errb := run(t, args...)
	if code != ExitOK {
		t.Fatalf("memberd %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errb)
	}
	return out
}

func TestHSMAndCAEndToEnd(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	dir := t.TempDir()
	caCert := filepath.Join(dir, "ca.pem")
	csr := filepath.Join(dir, "csr.pem")
	cert := filepath.Join(dir, "cert.pem")

	out := mustRun(t, "ca", "init", "--key", tok.KeyURI("ca"), "--generate-key", "--cn", "Member A CA", "--out", caCert)
	if !strings.Contains(out, "Member A CA") {
		t.Fatalf("ca init output: %s", out)
	}
	out = mustRun(t, "hsm", "keygen", "--key", tok.KeyURI("tls"))
	if !strings.Contains(out, "uri: pkcs11:") || !strings.Contains(out, "BEGIN PUBLIC KEY") {
		t.Fatalf("keygen output: %s", out)
	}
	out = mustRun(t, "hsm", "list", "--key", tok.URI())
	for _, want := range []string{"ca", "tls", "EC P-256"} {
		if !strings.Contains(out, want) {
			t.Fatalf("list output lacks %q: %s", want, out)
		}
	}
	mustRun(t, "hsm", "csr", "--key", tok.KeyURI("tls"), "--cn", "node1.member-a", "--dns", "node1.member-a",
		"--ip", "127.0.0.1", "--ou", "orderer", "--out", csr)
	if openssl, err := exec.LookPath("openssl"); err == nil {
		if b, err := exec.Command(openssl, "req", "-verify", "-noout", "-in", csr).CombinedOutput(); err != nil {
			t.Fatalf("openssl req -verify: %v %s", err, b)
		}
	}
	mustRun(t, "ca", "sign", "--key", tok.KeyURI("ca"), "--ca-cert", caCert, "--csr", csr, "--out", cert)
	out = mustRun(t, "hsm", "selftest", "--key", tok.KeyURI("tls"))
	if !strings.Contains(out, "selftest ok") {
		t.Fatalf("selftest output: %s", out)
	}

	// The issued chain verifies and certifies the HSM key.
	b, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := hsm.ParseCertificatesPEM(b)
	if err != nil || len(certs) != 2 {
		t.Fatalf("cert.pem: %d certs, %v", len(certs), err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(certs[1])
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: "node1.member-a", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	// ca sign keeps the OU (the Fabric role) and every SAN of the CSR.
	if ou := certs[0].Subject.OrganizationalUnit; len(ou) != 1 || ou[0] != "orderer" {
		t.Fatalf("issued certificate OUs %q, want [orderer]", ou)
	}
	if err := certs[0].VerifyHostname("127.0.0.1"); err != nil {
		t.Fatalf("issued certificate lost the IP SAN: %v", err)
	}
	s := tok.OpenKey(t, "tls", nil)
	a, _ := x509.MarshalPKIXPublicKey(certs[0].PublicKey)
	c, _ := x509.MarshalPKIXPublicKey(s.Public())
	if len(a) == 0 || string(a) != string(c) {
		t.Fatal("certificate does not certify the HSM key")
	}

	// Mistakes: exit codes and messages.
	wrong := filepath.Join(dir, "wrong.pin")
	if err := os.WriteFile(wrong, []byte("0000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		says string
	}{
		{"no key", []string{"hsm", "selftest"}, ExitUsage, "--key is required"},
		{"bad uri", []string{"hsm", "selftest", "--key", "pkcs11:token=a;bogus=1"}, ExitUsage, "unknown path attribute"},
		{"pin-value", []string{"hsm", "selftest", "--key", strings.Replace(tok.KeyURI("tls"), "pin-source=file:"+tok.PINFile, "pin-value=1234", 1)}, ExitUsage, "pin-value"},
		{"file key without flag", []string{"hsm", "selftest", "--key", "file:/x.pem"}, ExitUsage, "--insecure-file-key"},
		{"wrong pin", []string{"hsm", "selftest", "--key", strings.Replace(tok.KeyURI("tls"), tok.PINFile, wrong, 1)}, ExitRuntime, "PIN incorrect"},
		{"missing token", []string{"hsm", "list", "--key", strings.Replace(tok.URI(), "member-a", "member-x", 1)}, ExitRuntime, "member-x"},
		{"keygen twice", []string{"hsm", "keygen", "--key", tok.KeyURI("tls")}, ExitRuntime, "already"},
		{"csr without cn", []string{"hsm", "csr", "--key", tok.KeyURI("tls")}, ExitUsage, "--cn"},
		{"ca init exists", []string{"ca", "init", "--key", tok.KeyURI("ca"), "--cn", "x", "--out", caCert}, ExitRuntime, "exists"},
		{"ca sign no csr", []string{"ca", "sign", "--key", tok.KeyURI("ca"), "--ca-cert", caCert}, ExitUsage, "--csr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errb := run(t, tc.args...)
			if code != tc.code || !strings.Contains(errb, tc.says) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", code, tc.code, errb, tc.says)
			}
			if strings.Contains(errb, hsmtest.UserPIN) {
				t.Fatalf("stderr leaks the PIN: %s", errb)
			}
		})
	}
}

func TestCAWithInsecureFileKey(t *testing.T) {
	testenv.Command(t, "openssl", "openssl")
	dir := t.TempDir()
	key := filepath.Join(dir, "ca.key")
	leafKey := filepath.Join(dir, "leaf.key")
	code, _, errb := run(t, "ca", "init", "--key", "file:"+key, "--generate-key", "--cn", "Dev CA", "--out", filepath.Join(dir, "ca.pem"))
	if code != ExitUsage || !strings.Contains(errb, "--insecure-file-key") {
		t.Fatalf("file CA key without the dev flag: exit %d %s", code, errb)
	}
	code, _, errb = run(t, "ca", "init", "--key", "file:"+key, "--insecure-file-key", "--generate-key", "--cn", "Dev CA", "--out", filepath.Join(dir, "ca.pem"))
	if code != ExitOK || !strings.Contains(errb, "INSECURE") {
		t.Fatalf("ca init with file key: exit %d, stderr %s", code, errb)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key file: %v %v", fi, err)
	}
	if out, err := exec.Command("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", leafKey).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	mustRun(t, "hsm", "csr", "--key", "file:"+leafKey, "--insecure-file-key", "--cn", "dev", "--out", filepath.Join(dir, "csr.pem"))
	code, out, errb := run(t, "ca", "sign", "--key", "file:"+key, "--insecure-file-key", "--ca-cert", filepath.Join(dir, "ca.pem"), "--csr", filepath.Join(dir, "csr.pem"))
	if code != ExitOK || !strings.Contains(out, "BEGIN CERTIFICATE") || !strings.Contains(errb, "INSECURE software key") {
		t.Fatalf("ca sign with file key: exit %d\n%s\n%s", code, out, errb)
	}
}

// TestKeyFlagHints: a bare PEM path given as --key (as the demo's files
// invite) exits 2 with the file: form where the command takes file keys,
// and says HSM keys only where it does not.
func TestKeyFlagHints(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		says string
	}{
		{"ledger height", []string{"ledger", "height", "--orderer", "127.0.0.1:1", "--channel", "c", "--key", "admin-key.pem", "--cert", "admin.pem", "--msp-id", "M"},
			"--key file:admin-key.pem --insecure-file-key"},
		{"hsm selftest", []string{"hsm", "selftest", "--key", "key.pem"}, "--key file:key.pem --insecure-file-key"},
		{"hsm keygen", []string{"hsm", "keygen", "--key", "key.pem"}, "HSM keys only (pkcs11:...)"},
		{"bad uri, no hint", []string{"hsm", "selftest", "--key", "pkcs11:token=a;bogus=1"}, "unknown path attribute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errb := run(t, tc.args...)
			if code != ExitUsage || !strings.Contains(errb, tc.says) {
				t.Fatalf("exit %d, want %d saying %q: %s", code, ExitUsage, tc.says, errb)
			}
			if strings.HasPrefix(tc.name, "bad uri") && strings.Contains(errb, "--insecure-file-key") {
				t.Fatalf("hint on a pkcs11 URI: %s", errb)
			}
		})
	}
}

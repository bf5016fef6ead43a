package consortium_test

import (
	"context"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/policy"
)

// TestIdentityRotationThenRevocation: member A gets a new HSM key and
// certificate dropped into its identity folder while running (no restart);
// then a signed policy revokes A's old certificate. The relays close A's
// connections made with the old certificate at once, and A reconnects to
// both relays with the new one.
func TestIdentityRotationThenRevocation(t *testing.T) {
	module, _ := testenv.SoftHSMModule(t)
	L := initConsortium(t, 2, 2)
	d := start(t, L, nil)
	a, b := L.Members[0], L.Members[1]
	mdir := filepath.Join(L.Dir, "members", a)
	oldSerial := d.IdentitySerial(a)

	// A new key in A's token, a CSR, the member CA signs it.
	time.Sleep(1100 * time.Millisecond) // a later NotBefore (second resolution) makes the new one win
	uri := fmt.Sprintf("pkcs11:token=%s;object=identity-2?module-path=%s&pin-source=file:%s", a, module, filepath.Join(mdir, "pin"))
	ki, err := hsm.GenerateKey(uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := hsm.OpenKey(ki.URI, nil)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: a + "-appliance-2"}})
	key.Close()
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := hsm.OpenSoftSigner(filepath.Join(mdir, "ca-key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer caKey.Close()
	caPEM, _ := os.ReadFile(filepath.Join(mdir, "ca.pem"))
	cas, err := hsm.ParseCertificatesPEM(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := hsm.SignCSR(cas[0], caKey, csr, hsm.LeafConfig{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	idf := filepath.Join(mdir, "identity", hsm.IdentityFile)
	var keys struct {
		Keys []string `yaml:"keys"`
	}
	b0, _ := os.ReadFile(idf)
	if err := yaml.Unmarshal(b0, &keys); err != nil {
		t.Fatal(err)
	}
	keys.Keys = append(keys.Keys, ki.URI)
	b1, _ := yaml.Marshal(keys)
	if err := os.WriteFile(filepath.Join(mdir, "identity", "cert-2.pem"), hsm.EncodePEM("CERTIFICATE", leaf.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(idf, b1, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "A to switch to the new certificate", func() bool { return d.IdentitySerial(a) == leaf.SerialNumber.String() })
	t.Logf("%s switched identity: serial %s → %s", a, oldSerial, leaf.SerialNumber)

	// Revoke the old certificate.
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) {
		doc.Revocations.Certificates = append(doc.Revocations.Certificates,
			&policy.RevokedCert{Member: a, Serial: oldSerial, Reason: "rotated"})
	}, a, b)
	if err := d.DropRelayPolicy(v2.Marshal()); err != nil {
		t.Fatal(err)
	}
	// Each relay closes A's old-certificate connection; A redials with the
	// new certificate and is admitted.
	waitFor(t, 10*time.Second, "the relays to close A's old-certificate connections", func() bool {
		for _, s := range d.RelayStatus(a) {
			if s.LastClose == "" {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.WaitConnected(ctx); err != nil {
		t.Fatalf("A did not reconnect with its new certificate: %v (%+v)", err, d.RelayStatus(a))
	}
	for _, s := range d.RelayStatus(a) {
		t.Logf("%s: %s %s (closed before: %s)", s.ID, s.State, s.Path, s.LastClose)
	}
}

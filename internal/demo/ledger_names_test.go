package demo

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm"
)

// TestLedgerRefusesBadNodeCertificate: an appliance whose identity
// certificate lacks OU=orderer (the channel config enables NodeOUs), or a
// SAN for its ledger.listen address, does not start its ledger, and says
// how to issue a good certificate.
func TestLedgerRefusesBadNodeCertificate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a demo appliance")
	}
	for _, tc := range []struct {
		name string
		req  func(id string) hsm.CSRRequest
		want string
	}{
		{"no OU", func(id string) hsm.CSRRequest {
			r := demoCSR(id, "100.64.0.1")
			r.Subject.OrganizationalUnit = nil
			return r
		}, "has no OU that resolves to client, peer, admin or orderer"},
		{"no SAN", func(id string) hsm.CSRRequest {
			r := demoCSR(id, "100.64.0.1")
			r.DNSNames, r.IPs = nil, nil
			return r
		}, "has no SAN for 127.0.0.1, the key ledger.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "demo")
			L, err := Init(Options{Dir: dir, Members: 1, Relays: 1, HSM: "soft"})
			if err != nil {
				t.Fatal(err)
			}
			m := L.Members[0]
			mdir := filepath.Join(dir, "members", m)
			key, err := hsm.OpenSoftSigner(filepath.Join(mdir, "identity", "key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: discardW{}})
			if err != nil {
				t.Fatal(err)
			}
			defer key.Close()
			csr, err := hsm.CreateCSR(key, tc.req(m))
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := L.SignCSR(m, csr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(mdir, "identity", "cert.pem"), hsm.EncodePEM("CERTIFICATE", leaf.Raw), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			d, err := Start(ctx, L, nil)
			if err == nil {
				d.Stop()
				t.Fatal("the appliance started with a bad node certificate")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "memberd hsm csr") {
				t.Fatalf("err = %v, want it to say %q and how to fix it", err, tc.want)
			}
		})
	}
}

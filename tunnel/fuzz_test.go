package tunnel_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

func FuzzParseAttestation(f *testing.F) {
	ca := testpki.NewCA(f, "bank-a")
	signer, chain := ca.Issue(f, "appliance").Identity()
	now := time.Now()
	k, _ := tunnel.NewPrivateKey()
	att, err := tunnel.SignAttestation(signer, chain, "bank-a", k.PublicKey(), now, now.Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	raw := att.Marshal()
	f.Add(raw)
	f.Add(raw[:len(raw)-1])
	f.Add(raw[:40])
	f.Add([]byte{})
	f.Add([]byte{1, 0})
	f.Add([]byte{2, 6, 'b', 'a', 'n', 'k', '-', 'a'})
	auth := tunneltest.NewAuthority([]tunneltest.MemberSpec{{ID: "bank-a", Addr: netip.MustParseAddr("10.0.0.1"), CA: ca}}, nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := tunnel.ParseAttestation(b)
		if err != nil {
			return
		}
		if !bytes.Equal(a.Marshal(), b) {
			t.Fatalf("parse/marshal not canonical")
		}
		// Verifying never panics; only the untouched seed verifies.
		if a.Verify(auth, now.Add(time.Minute)) == nil && !bytes.Equal(b, raw) {
			t.Fatalf("a modified attestation verified")
		}
	})
}

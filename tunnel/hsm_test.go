package tunnel_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// TestAttestationSoftHSM: the member identity that signs attestations is a
// real PKCS#11 key in SoftHSM2, and a peer configured from that attestation
// carries traffic.
func TestAttestationSoftHSM(t *testing.T) {
	tok := hsmtest.NewToken(t, "bank-a")
	signer := tok.NewKey(t, "identity")
	caA, caB := testpki.NewCA(t, "bank-a"), testpki.NewCA(t, "bank-b")
	chainA := caA.Issue(t, "appliance", testpki.Key(signer), testpki.Valid(time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))).Chain()
	specs := []tunneltest.MemberSpec{
		{ID: "bank-a", Addr: netip.MustParseAddr("10.99.0.1"), CA: caA},
		{ID: "bank-b", Addr: netip.MustParseAddr("10.99.0.2"), CA: caB},
	}
	auth := tunneltest.NewAuthority(specs, nil)

	k, _ := tunnel.NewPrivateKey()
	now := time.Now()
	att, err := tunnel.SignAttestation(signer, chainA, "bank-a", k.PublicKey(), now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatalf("sign with SoftHSM key: %v", err)
	}
	parsed, err := tunnel.ParseAttestation(att.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if err := parsed.Verify(auth, now); err != nil {
		t.Fatalf("verify SoftHSM-signed attestation: %v", err)
	}

	netw := tunneltest.NewNetwork(tunneltest.Options{})
	signerB, chainB := caB.Issue(t, "appliance").Identity()
	devA, err := tunnel.New(tunnel.Config{Member: "bank-a", Signer: signer, Chain: chainA, Transport: netw.Transport("bank-a"), Authority: auth, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer devA.Close()
	tunneltest.Start(t, devA)
	devB, err := tunnel.New(tunnel.Config{Member: "bank-b", Signer: signerB, Chain: chainB, Transport: netw.Transport("bank-b"), Authority: auth, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer devB.Close()
	tunneltest.Start(t, devB)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	x, y := connect(t, ctx, devB, devA, "bank-a", 7050)
	if err := transfer(ctx, x, y, 64<<10, 11); err != nil {
		t.Fatal(err)
	}
	if err := devA.Rotate(ctx); err != nil {
		t.Fatalf("rotate with the HSM signing the new attestation: %v", err)
	}
	if err := transfer(ctx, x, y, 64<<10, 12); err != nil {
		t.Fatal(err)
	}
}

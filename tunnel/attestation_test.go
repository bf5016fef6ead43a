package tunnel_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

func wgPub(t testing.TB) tunnel.Key {
	k, err := tunnel.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestAttestationRoundTrip(t *testing.T) {
	ca := testpki.NewCA(t, "bank-a")
	auth := tunneltest.NewAuthority([]tunneltest.MemberSpec{{ID: "bank-a", Addr: netip.MustParseAddr("10.0.0.1"), CA: ca}}, nil)
	signer, chain := ca.Issue(t, "appliance").Identity()
	now := time.Now()
	pub := wgPub(t)
	att, err := tunnel.SignAttestation(signer, chain, "bank-a", pub, now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	raw := att.Marshal()
	got, err := tunnel.ParseAttestation(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got.Member != "bank-a" || got.PublicKey != pub || !got.NotAfter.Equal(att.NotAfter) || got.Nonce != att.Nonce {
		t.Fatalf("round trip mismatch: %+v vs %+v", got, att)
	}
	if !bytes.Equal(got.Marshal(), raw) {
		t.Fatal("re-marshal differs")
	}
	if err := got.Verify(auth, now); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestAttestationRefused(t *testing.T) {
	caA := testpki.NewCA(t, "bank-a")
	caB := testpki.NewCA(t, "bank-b")
	rogueCA := testpki.NewCA(t, "bank-a") // same name, not pinned by the policy
	auth := tunneltest.NewAuthority([]tunneltest.MemberSpec{
		{ID: "bank-a", Addr: netip.MustParseAddr("10.0.0.1"), CA: caA},
		{ID: "bank-b", Addr: netip.MustParseAddr("10.0.0.2"), CA: caB},
	}, nil)
	now := time.Now()
	signerA, chainA := caA.Issue(t, "appliance").Identity()
	signerB, chainB := caB.Issue(t, "appliance").Identity()
	rogueSigner, rogueChain := rogueCA.Issue(t, "appliance").Identity()
	mk := func(s *ecdsa.PrivateKey, chain []*x509.Certificate, member string, nb, na time.Time) *tunnel.Attestation {
		t.Helper()
		a, err := tunnel.SignAttestation(s, chain, member, wgPub(t), nb, na)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	forged := mk(signerA.(*ecdsa.PrivateKey), chainA, "bank-a", now.Add(-time.Minute), now.Add(time.Hour))
	forged.PublicKey[0] ^= 1 // attacker swaps in its own WireGuard key
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	wrongSigner := mk(signerA.(*ecdsa.PrivateKey), chainA, "bank-a", now.Add(-time.Minute), now.Add(time.Hour))
	{
		// re-sign with a key that is not the certificate's
		b, err := tunnel.SignAttestation(otherKey, caA.Issue(t, "appliance", testpki.Key(otherKey), testpki.Valid(now.Add(-time.Hour), now.Add(time.Hour))).Chain(), "bank-a", wrongSigner.PublicKey, now.Add(-time.Minute), now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		wrongSigner.Signature = b.Signature
	}
	expiredCert := caA.Issue(t, "appliance", testpki.Key(signerA), testpki.Valid(now.Add(-2*time.Hour), now.Add(-time.Hour))).Chain()

	for _, tc := range []struct {
		name string
		att  *tunnel.Attestation
		want error
	}{
		{"forged key", forged, tunnel.ErrAttestationSignature},
		{"signature by another key", wrongSigner, tunnel.ErrAttestationSignature},
		{"wrong member", mk(signerB.(*ecdsa.PrivateKey), chainB, "bank-a", now.Add(-time.Minute), now.Add(time.Hour)), tunnel.ErrAttestationIdentity},
		{"expired", mk(signerA.(*ecdsa.PrivateKey), chainA, "bank-a", now.Add(-2*time.Hour), now.Add(-time.Hour)), tunnel.ErrAttestationExpired},
		{"not yet valid", mk(signerA.(*ecdsa.PrivateKey), chainA, "bank-a", now.Add(time.Hour), now.Add(2*time.Hour)), tunnel.ErrAttestationExpired},
		{"certificate expired", mk(signerA.(*ecdsa.PrivateKey), expiredCert, "bank-a", now.Add(-time.Minute), now.Add(time.Hour)), tunnel.ErrAttestationExpired},
		{"cert not chaining to the member CA", mk(rogueSigner.(*ecdsa.PrivateKey), rogueChain, "bank-a", now.Add(-time.Minute), now.Add(time.Hour)), tunnel.ErrAttestationIdentity},
		{"not a member", mk(signerA.(*ecdsa.PrivateKey), chainA, "bank-z", now.Add(-time.Minute), now.Add(time.Hour)), tunnel.ErrAttestationIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Through the wire format, as a peer sees it.
			parsed, err := tunnel.ParseAttestation(tc.att.Marshal())
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			err = parsed.Verify(auth, now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
			t.Log(err)
		})
	}
}

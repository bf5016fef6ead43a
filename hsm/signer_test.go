package hsm_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
)

func TestSignVerifyLowS(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	s := tok.NewKey(t, "tls")
	pub := s.Public().(*ecdsa.PublicKey)
	n := 200
	if testing.Short() {
		n = 50
	}
	for i := 0; i < n; i++ {
		d := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		sig, err := s.Sign(nil, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("sign %d: %v", i, err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatalf("signature %d does not verify", i)
		}
		if !hsm.IsLowS(sig) {
			t.Fatalf("signature %d is high-S", i)
		}
	}
}

func TestCloseIdempotentAndSignAfterClose(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	ki := tok.GenerateKey(t, "k")
	s, err := hsm.OpenSigner(ki.URI, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	d := sha256.Sum256(nil)
	if _, err := s.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, hsm.ErrClosed) {
		t.Fatalf("Sign after Close: got %v, want ErrClosed", err)
	}
}

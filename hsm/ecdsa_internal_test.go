package hsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"math/big"
	"testing"
)

// TestRawToLowSDER feeds r||s with a high S (N - s of a valid signature) and
// checks the result is the low-S form, verifies, and round-trips.
func TestRawToLowSDER(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	for i := 0; i < 50; i++ {
		r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
		if err != nil {
			t.Fatal(err)
		}
		for _, sv := range []*big.Int{s, new(big.Int).Sub(p256N, s)} { // both forms verify
			raw := make([]byte, 64)
			r.FillBytes(raw[:32])
			sv.FillBytes(raw[32:])
			der, err := rawToLowSDER(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !IsLowS(der) || !ecdsa.VerifyASN1(&key.PublicKey, d[:], der) {
				t.Fatalf("raw %x -> %x: not low-S or does not verify", raw, der)
			}
			again, err := ToLowS(der) // encoding/asn1 path
			if err != nil || string(again) != string(der) {
				t.Fatalf("hand-made DER %x differs from encoding/asn1's %x (%v)", der, again, err)
			}
		}
	}
	for _, bad := range [][]byte{nil, make([]byte, 63), make([]byte, 64), make([]byte, 200)} {
		if _, err := rawToLowSDER(bad); err == nil {
			t.Fatalf("accepted %d bytes %x", len(bad), bad)
		}
	}
}

func TestParseECPoint(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// A key whose bare point 04||X||Y reads as a DER OCTET STRING of 63
	// bytes (X starts with 0x3f): 1 in 256 random keys, a flaky test before.
	var ambiguous *ecdsa.PrivateKey
	for ambiguous == nil {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if p := elliptic.Marshal(elliptic.P256(), k.X, k.Y); p[1] == 0x3f { //nolint:staticcheck // the wire format of CKA_EC_POINT
			ambiguous = k
		}
	}
	for _, k := range []*ecdsa.PrivateKey{key, ambiguous} {
		point := elliptic.Marshal(elliptic.P256(), k.X, k.Y) //nolint:staticcheck // the wire format of CKA_EC_POINT
		wrapped := mustMarshal(point)
		for name, p := range map[string][]byte{"DER OCTET STRING": wrapped, "bare point": point} {
			pub, err := parseECPoint(p256Params, p)
			if err != nil || !pub.Equal(&k.PublicKey) {
				t.Fatalf("%s (X starts %#x): %v", name, point[1], err)
			}
		}
	}
	wrapped := mustMarshal(elliptic.Marshal(elliptic.P256(), key.X, key.Y)) //nolint:staticcheck // the wire format of CKA_EC_POINT
	p384 := mustMarshal([]int{1, 3, 132, 0, 34})
	if _, err := parseECPoint(p384, wrapped); err == nil {
		t.Fatal("accepted a non-OID curve parameter")
	}
	if _, err := parseECPoint(p256Params, wrapped[:20]); err == nil {
		t.Fatal("accepted a truncated point")
	}
}

func FuzzParseECPoint(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	point := elliptic.Marshal(elliptic.P256(), key.X, key.Y) //nolint:staticcheck
	f.Add(p256Params, mustMarshal(point))
	f.Add(p256Params, point)
	f.Add([]byte{6, 0}, []byte{4, 0})
	f.Fuzz(func(t *testing.T, params, point []byte) {
		pub, err := parseECPoint(params, point)
		if err == nil && !pub.Curve.IsOnCurve(pub.X, pub.Y) { //nolint:staticcheck
			t.Fatal("accepted a point not on the curve")
		}
	})
}

func FuzzRawToLowSDER(f *testing.F) {
	f.Add(make([]byte, 64))
	f.Add(append([]byte{1}, make([]byte, 63)...))
	f.Add(append(append([]byte{0x80}, make([]byte, 31)...), append([]byte{0, 0, 1}, make([]byte, 29)...)...))
	f.Fuzz(func(t *testing.T, raw []byte) {
		der, err := rawToLowSDER(raw)
		if err != nil {
			return
		}
		if !IsLowS(der) {
			t.Fatalf("not low-S: %x", der)
		}
		ref, err := ToLowS(der) // re-encoded by encoding/asn1
		if err != nil || string(ref) != string(der) {
			t.Fatalf("DER %x is not canonical (asn1 gives %x, %v)", der, ref, err)
		}
		var sig ecdsaSig
		if _, err := asn1.Unmarshal(der, &sig); err != nil {
			t.Fatal(err)
		}
		r := new(big.Int).SetBytes(raw[:32])
		s := new(big.Int).SetBytes(raw[32:])
		if sig.R.Cmp(r) != 0 || (sig.S.Cmp(s) != 0 && new(big.Int).Add(sig.S, s).Cmp(p256N) != 0) {
			t.Fatalf("r or s changed: %x -> %x", raw, der)
		}
	})
}

func BenchmarkRawToLowSDER(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("x"))
	r, s, _ := ecdsa.Sign(rand.Reader, key, d[:])
	s = new(big.Int).Sub(p256N, s) // high or low, either way once
	raw := make([]byte, 64)
	r.FillBytes(raw[:32])
	s.FillBytes(raw[32:])
	for b.Loop() {
		if _, err := rawToLowSDER(raw); err != nil {
			b.Fatal(err)
		}
	}
}

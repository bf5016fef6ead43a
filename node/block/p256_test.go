package block

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"math/big"
	"testing"
)

func p256Key(t testing.TB) (*ecdsa.PrivateKey, *p256Table) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tbl := newP256Table(&k.PublicKey)
	if tbl == nil {
		t.Fatal("no table for a P-256 key")
	}
	return k, tbl
}

// TestP256TableAgrees: the table verifier gives crypto/ecdsa's verdict on
// valid signatures, on tampered digests, r and s, on out-of-range and zero
// values, and on another key's signatures.
func TestP256TableAgrees(t *testing.T) {
	n := p256N
	for range 3 {
		k, tbl := p256Key(t)
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		for i := range 200 {
			h := sha256.Sum256([]byte{byte(i), byte(i >> 8), 7})
			r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
			if err != nil {
				t.Fatal(err)
			}
			or, os, _ := ecdsa.Sign(rand.Reader, other, h[:])
			flipped := h
			flipped[i%32] ^= 1 << (i % 8)
			add := func(a *big.Int, d int64) *big.Int { return new(big.Int).Add(a, big.NewInt(d)) }
			cases := []struct {
				name string
				hash []byte
				r, s *big.Int
			}{
				{"valid", h[:], r, s},
				{"valid, s negated mod n", h[:], r, new(big.Int).Sub(n, s)},
				{"digest changed", flipped[:], r, s},
				{"r+1", h[:], add(r, 1), s},
				{"s+1", h[:], r, add(s, 1)},
				{"r+n", h[:], new(big.Int).Add(r, n), s},
				{"s+n", h[:], r, new(big.Int).Add(s, n)},
				{"r=0", h[:], big.NewInt(0), s},
				{"s=0", h[:], r, big.NewInt(0)},
				{"r=n", h[:], new(big.Int).Set(n), s},
				{"negative s", h[:], r, new(big.Int).Neg(s)},
				{"other key", h[:], or, os},
			}
			for _, c := range cases {
				want := ecdsa.Verify(&k.PublicKey, c.hash, c.r, c.s)
				if got := tbl.verify(c.hash, c.r, c.s); got != want {
					t.Fatalf("sig %d %s: table says %v, crypto/ecdsa %v", i, c.name, got, want)
				}
				if c.name == "valid" && !want {
					t.Fatal("crypto/ecdsa rejected a fresh signature")
				}
			}
		}
	}
	if newP256Table(&ecdsa.PublicKey{Curve: elliptic.P384(), X: big.NewInt(1), Y: big.NewInt(1)}) != nil {
		t.Fatal("a table for a P-384 key")
	}
}

// FuzzP256Table: for arbitrary digests and (r, s), the table verifier and
// crypto/ecdsa agree (seeded with valid signatures, which mutation turns
// into near misses).
func FuzzP256Table(f *testing.F) {
	k, tbl := p256Key(f)
	for i := range 4 {
		h := sha256.Sum256([]byte{byte(i)})
		r, s, _ := ecdsa.Sign(rand.Reader, k, h[:])
		f.Add(h[:], r.Bytes(), s.Bytes())
	}
	f.Add([]byte{}, []byte{1}, []byte{1})
	f.Fuzz(func(t *testing.T, hash, rb, sb []byte) {
		if len(hash) != 32 || len(rb) > 33 || len(sb) > 33 {
			return
		}
		r, s := new(big.Int).SetBytes(rb), new(big.Int).SetBytes(sb)
		if got, want := tbl.verify(hash, r, s), ecdsa.Verify(&k.PublicKey, hash, r, s); got != want {
			t.Fatalf("table says %v, crypto/ecdsa %v", got, want)
		}
	})
}

// TestCreatorCacheTable: a creator verified often gets a table; through it,
// good envelopes verify and bad, high-S and malformed signatures fail with
// the same errors as VerifyECDSA.
func TestCreatorCacheTable(t *testing.T) {
	c := NewCreatorCache(0)
	id := newIdentity(t, "A", "a")
	var last *Envelope
	for i := range tableAfter + 10 {
		e, err := ParseEnvelope(id.envelope(t, "ch", []byte{byte(i)}))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Verify(e.SignatureHeader.Creator, e.Payload, e.Signature); err != nil {
			t.Fatalf("envelope %d: %v", i, err)
		}
		last = e
	}
	c.mu.Lock()
	k := c.m[string(id.creator)]
	c.mu.Unlock()
	if k == nil || k.table.Load() == nil || c.tables.Load() != 1 {
		t.Fatalf("no table after %d verifications (tables %d)", tableAfter+10, c.tables.Load())
	}
	cr := last.SignatureHeader.Creator
	if err := c.Verify(cr, []byte("other"), last.Signature); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("other data: %v", err)
	}
	high := flipS(p256N, last.Signature)
	if err := c.Verify(cr, last.Payload, high); !errors.Is(err, ErrHighS) {
		t.Fatalf("high-S: %v", err)
	}
	if err := c.Verify(cr, last.Payload, append(last.Signature, 0)); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("trailing byte: %v", err)
	}
	if err := c.Verify(cr, last.Payload, nil); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("empty signature: %v", err)
	}
}

// BenchmarkVerifyP256: crypto/ecdsa against the table, same signature.
func BenchmarkVerifyP256(b *testing.B) {
	k, tbl := p256Key(b)
	h := sha256.Sum256([]byte("envelope"))
	r, s, _ := ecdsa.Sign(rand.Reader, k, h[:])
	b.Run("crypto-ecdsa", func(b *testing.B) {
		for b.Loop() {
			ecdsa.Verify(&k.PublicKey, h[:], r, s)
		}
	})
	b.Run("table", func(b *testing.B) {
		for b.Loop() {
			tbl.verify(h[:], r, s)
		}
	})
	b.Run("table-build", func(b *testing.B) {
		for b.Loop() {
			newP256Table(&k.PublicKey)
		}
	})
}

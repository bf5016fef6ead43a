package block

// Fast ECDSA P-256 verification for creators that sign many envelopes.
//
// crypto/ecdsa computes u1·G + u2·Q with a constant-time variable-base
// scalar multiplication for the creator's key Q (about 255 doublings and 52
// additions): two thirds of a verification, which is itself ~70% of the
// ordering leader's CPU (pprof of BenchmarkOrdering). A Broadcast client
// signs thousands of envelopes with one key, so the cache keeps, for a key
// seen often, a table of j·16^i·Q (i < 64, 1 <= j <= 15; ~100 KB, built in
// ~0.6 ms) and u2·Q becomes at most 64 additions. Verification handles only
// public data, so variable time is fine. The point arithmetic is
// filippo.io/nistec (the code of Go's crypto/internal/fips140/nistec); this
// file only does the textbook ECDSA verification equation on top of it and
// is tested against crypto/ecdsa (TestP256TableAgrees, FuzzP256Table).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"math/big"

	"filippo.io/nistec"
)

// p256N is the order of the P-256 base point, p256HalfN half of it (the
// low-S bound).
var (
	p256N     = elliptic.P256().Params().N
	p256HalfN = halfOrder(p256N)
)

// p256Table holds j·16^i·Q for a public key Q: t[i][j-1].
type p256Table [64][15]*nistec.P256Point

// newP256Table precomputes the table of pub; nil if pub is not a valid
// P-256 key.
func newP256Table(pub *ecdsa.PublicKey) *p256Table {
	if pub.Curve != elliptic.P256() {
		return nil
	}
	raw, err := pub.Bytes()
	if err != nil {
		return nil
	}
	base, err := nistec.NewP256Point().SetBytes(raw)
	if err != nil {
		return nil
	}
	var t p256Table
	for i := range t {
		t[i][0] = nistec.NewP256Point().Set(base)
		for j := 1; j < len(t[i]); j++ {
			t[i][j] = nistec.NewP256Point().Add(t[i][j-1], base)
		}
		for range 4 {
			base.Double(base)
		}
	}
	return &t
}

// mult returns scalar·Q for a 32-byte big-endian scalar.
func (t *p256Table) mult(scalar *[32]byte) *nistec.P256Point {
	r := nistec.NewP256Point() // the point at infinity
	for i := range t {
		nib := scalar[31-i/2] >> (4 * (i % 2)) & 0xf
		if nib != 0 {
			r.Add(r, t[i][nib-1])
		}
	}
	return r
}

// verify reports whether (r, s) is a valid ECDSA signature of hash (a
// SHA-256 digest) by the table's key, with the checks of crypto/ecdsa:
// 0 < r, s < N, and R = u1·G + u2·Q not infinity with R.x ≡ r (mod N).
func (t *p256Table) verify(hash []byte, r, s *big.Int) bool {
	if r.Sign() <= 0 || s.Sign() <= 0 || r.Cmp(p256N) >= 0 || s.Cmp(p256N) >= 0 {
		return false
	}
	w := new(big.Int).ModInverse(s, p256N)
	if w == nil {
		return false
	}
	e := new(big.Int).SetBytes(hash) // 256-bit digest, 256-bit N: no truncation
	u1 := new(big.Int).Mul(e, w)
	u1.Mod(u1, p256N)
	u2 := new(big.Int).Mul(r, w)
	u2.Mod(u2, p256N)
	var b1, b2 [32]byte
	u1.FillBytes(b1[:])
	u2.FillBytes(b2[:])
	p, err := nistec.NewP256Point().ScalarBaseMult(b1[:])
	if err != nil {
		return false
	}
	p.Add(p, t.mult(&b2))
	x, err := p.BytesX() // fails for the point at infinity
	if err != nil {
		return false
	}
	v := new(big.Int).SetBytes(x)
	v.Mod(v, p256N)
	return v.Cmp(r) == 0
}

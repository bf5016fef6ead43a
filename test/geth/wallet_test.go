package geth_test

// A minimal Ethereum wallet for the test: secp256k1 keys, node IDs (enode),
// addresses, and EIP-155 signed legacy transactions, so that the test plays
// the client that signs and geth only verifies. Arithmetic on math/big in
// affine coordinates: slow and not constant-time, fine for a handful of test
// signatures, never for real keys.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/sha3"
)

var (
	secpP  = hexInt("fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f")
	secpN  = hexInt("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
	secpGx = hexInt("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
	secpGy = hexInt("483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8")
)

func hexInt(s string) *big.Int {
	v, ok := new(big.Int).SetString(s, 16)
	if !ok {
		panic("bad constant " + s)
	}
	return v
}

// point is an affine point on secp256k1; nil X is the point at infinity.
type point struct{ X, Y *big.Int }

func (p point) inf() bool { return p.X == nil }

func mod(v *big.Int) *big.Int { return v.Mod(v, secpP) }

func add(a, b point) point {
	if a.inf() {
		return b
	}
	if b.inf() {
		return a
	}
	var lambda *big.Int
	if a.X.Cmp(b.X) == 0 {
		if new(big.Int).Add(a.Y, b.Y).Cmp(secpP) == 0 || a.Y.Sign() == 0 {
			return point{}
		}
		// tangent: 3x² / 2y (a = 0 for secp256k1)
		num := mod(new(big.Int).Mul(big.NewInt(3), new(big.Int).Mul(a.X, a.X)))
		den := new(big.Int).ModInverse(mod(new(big.Int).Lsh(a.Y, 1)), secpP)
		lambda = mod(num.Mul(num, den))
	} else {
		num := mod(new(big.Int).Sub(b.Y, a.Y))
		den := new(big.Int).ModInverse(mod(new(big.Int).Sub(b.X, a.X)), secpP)
		lambda = mod(num.Mul(num, den))
	}
	x := mod(new(big.Int).Sub(new(big.Int).Sub(new(big.Int).Mul(lambda, lambda), a.X), b.X))
	y := mod(new(big.Int).Sub(new(big.Int).Mul(lambda, new(big.Int).Sub(a.X, x)), a.Y))
	return point{x, y}
}

func mul(k *big.Int, p point) point {
	var r point
	for i := k.BitLen() - 1; i >= 0; i-- {
		r = add(r, r)
		if k.Bit(i) == 1 {
			r = add(r, p)
		}
	}
	return r
}

func baseMul(k *big.Int) point { return mul(k, point{secpGx, secpGy}) }

func be32(v *big.Int) []byte { return v.FillBytes(make([]byte, 32)) }

func keccak(parts ...[]byte) []byte {
	h := sha3.NewLegacyKeccak256()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

// key is a secp256k1 private key.
type key struct {
	d   *big.Int
	pub point
}

func newKey() (*key, error) {
	for {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		if k, err := keyFromBytes(b[:]); err == nil {
			return k, nil
		}
	}
}

func keyFromBytes(b []byte) (*key, error) {
	d := new(big.Int).SetBytes(b)
	if d.Sign() == 0 || d.Cmp(secpN) >= 0 {
		return nil, errors.New("private key out of range")
	}
	return &key{d: d, pub: baseMul(d)}, nil
}

// hex is the private key as geth's --nodekey file holds it.
func (k *key) hex() string { return hex.EncodeToString(be32(k.d)) }

// nodeID is the 64-byte public key in hex, the user part of an enode URL.
func (k *key) nodeID() string { return hex.EncodeToString(append(be32(k.pub.X), be32(k.pub.Y)...)) }

// address is the Ethereum account of the key, lower-case 0x hex.
func (k *key) address() string {
	return "0x" + hex.EncodeToString(keccak(be32(k.pub.X), be32(k.pub.Y))[12:])
}

// sign returns r, s and the recovery id (parity of R.y, low-s normalised)
// of hash.
func (k *key) sign(hash []byte) (r, s *big.Int, recid uint64, err error) {
	z := new(big.Int).SetBytes(hash)
	for {
		kb := make([]byte, 32)
		if _, err := rand.Read(kb); err != nil {
			return nil, nil, 0, err
		}
		nonce := new(big.Int).SetBytes(kb)
		if nonce.Sign() == 0 || nonce.Cmp(secpN) >= 0 {
			continue
		}
		R := baseMul(nonce)
		if R.X.Cmp(secpN) >= 0 { // r would overflow n: recovery id ≥ 2, retry
			continue
		}
		r = new(big.Int).Set(R.X)
		s = new(big.Int).Mul(r, k.d)
		s.Add(s, z)
		s.Mul(s, new(big.Int).ModInverse(nonce, secpN))
		s.Mod(s, secpN)
		if s.Sign() == 0 {
			continue
		}
		recid = uint64(R.Y.Bit(0))
		if s.Cmp(new(big.Int).Rsh(secpN, 1)) > 0 {
			s.Sub(secpN, s)
			recid ^= 1
		}
		return r, s, recid, nil
	}
}

// verify checks an ECDSA signature against pub (for the wallet's own test).
func verify(pub point, hash []byte, r, s *big.Int) bool {
	if r.Sign() <= 0 || s.Sign() <= 0 || r.Cmp(secpN) >= 0 || s.Cmp(secpN) >= 0 {
		return false
	}
	w := new(big.Int).ModInverse(s, secpN)
	u1 := new(big.Int).Mul(new(big.Int).SetBytes(hash), w)
	u2 := new(big.Int).Mul(r, w)
	R := add(baseMul(u1.Mod(u1, secpN)), mul(u2.Mod(u2, secpN), pub))
	return !R.inf() && new(big.Int).Mod(R.X, secpN).Cmp(r) == 0
}

// RLP (Ethereum's recursive length prefix) for byte strings and lists.

func rlpHeader(short, long byte, n int) []byte {
	if n <= 55 {
		return []byte{short + byte(n)}
	}
	l := new(big.Int).SetInt64(int64(n)).Bytes()
	return append([]byte{long + byte(len(l))}, l...)
}

func rlpBytes(b []byte) []byte {
	if len(b) == 1 && b[0] < 0x80 {
		return b
	}
	return append(rlpHeader(0x80, 0xb7, len(b)), b...)
}

// rlpInt encodes a non-negative integer (big-endian, no leading zeros).
func rlpInt(v *big.Int) []byte { return rlpBytes(v.Bytes()) }

func rlpList(items ...[]byte) []byte {
	var body []byte
	for _, it := range items {
		body = append(body, it...)
	}
	return append(rlpHeader(0xc0, 0xf7, len(body)), body...)
}

// legacyTx is a pre-EIP-2718 transaction, signed with EIP-155 replay
// protection.
type legacyTx struct {
	Nonce    uint64
	GasPrice *big.Int
	Gas      uint64
	To       []byte // 20 bytes
	Value    *big.Int
	Data     []byte
}

func (tx legacyTx) fields() [][]byte {
	return [][]byte{
		rlpInt(new(big.Int).SetUint64(tx.Nonce)), rlpInt(tx.GasPrice),
		rlpInt(new(big.Int).SetUint64(tx.Gas)), rlpBytes(tx.To), rlpInt(tx.Value), rlpBytes(tx.Data),
	}
}

// signingHash is keccak(rlp([nonce, gasPrice, gas, to, value, data, chainId, 0, 0])).
func (tx legacyTx) signingHash(chainID uint64) []byte {
	f := append(tx.fields(), rlpInt(new(big.Int).SetUint64(chainID)), rlpInt(new(big.Int)), rlpInt(new(big.Int)))
	return keccak(rlpList(f...))
}

// signTx returns the raw signed transaction (for eth_sendRawTransaction)
// and its hash.
func signTx(k *key, tx legacyTx, chainID uint64) (raw, hash []byte, err error) {
	if len(tx.To) != 20 {
		return nil, nil, fmt.Errorf("to: %d bytes, want 20", len(tx.To))
	}
	r, s, recid, err := k.sign(tx.signingHash(chainID))
	if err != nil {
		return nil, nil, err
	}
	v := new(big.Int).SetUint64(chainID*2 + 35 + recid)
	raw = rlpList(append(tx.fields(), rlpInt(v), rlpInt(r), rlpInt(s))...)
	return raw, keccak(raw), nil
}

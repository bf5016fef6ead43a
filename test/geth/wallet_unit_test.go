package geth_test

import (
	"bytes"
	"encoding/hex"
	"math/big"
	"strings"
	"testing"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The example of EIP-155 ("Example" section): key 0x46…46, chain 1.
func TestWalletEIP155Vector(t *testing.T) {
	k, err := keyFromBytes(bytes.Repeat([]byte{0x46}, 32))
	if err != nil {
		t.Fatal(err)
	}
	tx := legacyTx{Nonce: 9, GasPrice: big.NewInt(20e9), Gas: 21000,
		To: bytes.Repeat([]byte{0x35}, 20), Value: new(big.Int).Exp(big.NewInt(10), big.NewInt(18), nil)}
	wantData := mustHex(t, "ec098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080018080")
	f := append(tx.fields(), rlpInt(big.NewInt(1)), rlpInt(new(big.Int)), rlpInt(new(big.Int)))
	if got := rlpList(f...); !bytes.Equal(got, wantData) {
		t.Fatalf("signing data %x, want %x", got, wantData)
	}
	if got, want := tx.signingHash(1), mustHex(t, "daf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53"); !bytes.Equal(got, want) {
		t.Fatalf("signing hash %x, want %x", got, want)
	}
	if got, want := k.address(), "0x9d8a62f656a8d1615c1294fd71e9cfb3e4855a4f"; got != want {
		t.Fatalf("address %s, want %s", got, want)
	}
	h := tx.signingHash(1)
	for range 4 {
		r, s, recid, err := k.sign(h)
		if err != nil {
			t.Fatal(err)
		}
		if !verify(k.pub, h, r, s) || recid > 1 || s.Cmp(new(big.Int).Rsh(secpN, 1)) > 0 {
			t.Fatalf("signature r=%x s=%x recid=%d does not verify or is not low-s", r, s, recid)
		}
		if verify(k.pub, tx.signingHash(2), r, s) {
			t.Fatal("signature verifies for another hash")
		}
	}
}

func TestWalletKeyOne(t *testing.T) {
	one := make([]byte, 32)
	one[31] = 1
	k, err := keyFromBytes(one)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.address(), "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"; got != want {
		t.Fatalf("address of key 1: %s, want %s", got, want)
	}
	if _, err := keyFromBytes(secpN.Bytes()); err == nil {
		t.Fatal("key n accepted")
	}
}

func TestRLPLong(t *testing.T) {
	b := bytes.Repeat([]byte{0xaa}, 56)
	if got := rlpBytes(b); got[0] != 0xb8 || got[1] != 56 || len(got) != 58 {
		t.Fatalf("56-byte string header % x", got[:2])
	}
	if got := rlpBytes([]byte{0x7f}); !bytes.Equal(got, []byte{0x7f}) {
		t.Fatalf("single byte: % x", got)
	}
	if got := rlpInt(new(big.Int)); !bytes.Equal(got, []byte{0x80}) {
		t.Fatalf("zero: % x", got)
	}
}

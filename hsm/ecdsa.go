package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// oidP256 is the named-curve OID of P-256 (prime256v1, secp256r1).
var oidP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}

// p256Params is CKA_EC_PARAMS for P-256: the DER encoding of its OID.
var p256Params = mustMarshal(oidP256)

func mustMarshal(v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var (
	p256N          = elliptic.P256().Params().N
	p256HalfN      = new(big.Int).Rsh(p256N, 1)
	p256NBytes     = [32]byte(p256N.FillBytes(make([]byte, 32)))
	p256HalfNBytes = [32]byte(p256HalfN.FillBytes(make([]byte, 32)))
)

type ecdsaSig struct{ R, S *big.Int }

// rawToLowSDER converts a PKCS#11 CKM_ECDSA P-256 signature (r||s, 32
// bytes each) to ASN.1 DER with S normalised to the lower half of the group
// order (S' = N - S when S > N/2), as Fabric requires.
func rawToLowSDER(raw []byte) ([]byte, error) {
	if len(raw) != 64 {
		return nil, fmt.Errorf("ECDSA P-256 signature from HSM has length %d, want 64 (r||s)", len(raw))
	}
	r, sv := raw[:32], raw[32:]
	if isZero(r) || isZero(sv) || bytes.Compare(r, p256NBytes[:]) >= 0 || bytes.Compare(sv, p256NBytes[:]) >= 0 {
		return nil, errors.New("ECDSA signature from HSM has r or s out of range")
	}
	if bytes.Compare(sv, p256HalfNBytes[:]) > 0 {
		var low [32]byte
		new(big.Int).Sub(p256N, new(big.Int).SetBytes(sv)).FillBytes(low[:])
		sv = low[:]
	}
	// DER: SEQUENCE { INTEGER r, INTEGER s }, at most 2+2*(2+33) = 72 bytes,
	// so every length fits in one byte. Hand-encoded: this runs on every
	// signature and encoding/asn1 costs more than the rest of the pool.
	out := make([]byte, 2, 72)
	out[0] = 0x30
	out = appendDERInt(out, r)
	out = appendDERInt(out, sv)
	out[1] = byte(len(out) - 2)
	return out, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// appendDERInt appends a positive big-endian integer as a DER INTEGER.
func appendDERInt(out, v []byte) []byte {
	for len(v) > 1 && v[0] == 0 {
		v = v[1:]
	}
	n := len(v)
	if v[0]&0x80 != 0 {
		out = append(out, 0x02, byte(n+1), 0)
	} else {
		out = append(out, 0x02, byte(n))
	}
	return append(out, v...)
}

func marshalLowS(r, s *big.Int) ([]byte, error) {
	if s.Cmp(p256HalfN) > 0 {
		s = new(big.Int).Sub(p256N, s)
	}
	return asn1.Marshal(ecdsaSig{r, s})
}

// ToLowS rewrites a DER ECDSA P-256 signature with S in the lower half of
// the group order. It is what every Signer in this package returns already;
// exported for callers that verify or normalise foreign signatures.
func ToLowS(der []byte) ([]byte, error) {
	var sig ecdsaSig
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 || sig.R == nil || sig.S == nil || sig.R.Sign() <= 0 || sig.S.Sign() <= 0 ||
		sig.R.Cmp(p256N) >= 0 || sig.S.Cmp(p256N) >= 0 {
		return nil, errors.New("not a DER ECDSA signature")
	}
	return marshalLowS(sig.R, sig.S)
}

// IsLowS reports whether a DER ECDSA P-256 signature has S <= N/2.
func IsLowS(der []byte) bool {
	var sig ecdsaSig
	rest, err := asn1.Unmarshal(der, &sig)
	return err == nil && len(rest) == 0 && sig.S != nil && sig.S.Sign() > 0 && sig.S.Cmp(p256HalfN) <= 0
}

// parseECPoint turns CKA_EC_PARAMS and CKA_EC_POINT into a P-256 public
// key. CKA_EC_POINT is a DER OCTET STRING wrapping the uncompressed point
// (some modules return the bare point; both are accepted).
func parseECPoint(params, point []byte) (*ecdsa.PublicKey, error) {
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(params, &oid); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: CKA_EC_PARAMS is not a named curve OID", ErrWrongKeyType)
	}
	if !oid.Equal(oidP256) {
		return nil, fmt.Errorf("%w: curve %v, only P-256 (1.2.840.10045.3.1.7) is supported", ErrWrongKeyType, oid)
	}
	// A bare point 04||X||Y whose X starts with 0x3f also parses as a DER
	// OCTET STRING (tag 04, length 63): only an unwrapped 65-byte
	// uncompressed point counts as the wrapped form.
	raw := point
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 && len(inner) == 65 {
		raw = inner
	}
	k, err := ecdh.P256().NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: CKA_EC_POINT is not a valid P-256 point: %v", ErrWrongKeyType, err)
	}
	// Uncompressed point 04||X||Y.
	b := k.Bytes()
	return &ecdsa.PublicKey{Curve: elliptic.P256(),
		X: new(big.Int).SetBytes(b[1:33]), Y: new(big.Int).SetBytes(b[33:])}, nil
}

// checkDigest checks the digest against the hash of opts.
func checkDigest(digest []byte, opts crypto.SignerOpts) error {
	if opts == nil {
		return nil
	}
	if h := opts.HashFunc(); h != 0 && h.Size() != len(digest) {
		return fmt.Errorf("hsm: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	return nil
}

func selfTest(ctx context.Context, s crypto.Signer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("%w: self-test: public key is %T, want ECDSA P-256", ErrWrongKeyType, s.Public())
	}
	digest := sha256.Sum256([]byte("memberd hsm self-test"))
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		return fmt.Errorf("self-test: sign: %w", err)
	}
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return fmt.Errorf("%w: self-test: signature does not verify with the key's public key", ErrSign)
	}
	if !IsLowS(sig) {
		return fmt.Errorf("%w: self-test: signature is not low-S", ErrSign)
	}
	return nil
}

package tunnel

// WireGuard key attestations.
//
// The appliance makes its WireGuard key itself (Curve25519, in memory); its
// member identity (a crypto.Signer, usually in the HSM, plus an X.509 chain
// issued by the member CA) signs a statement binding that key to the member
// id for a limited time. Peers configure a WireGuard peer only from a valid,
// unexpired attestation whose certificate chain the current Authority accepts
// for that member.
//
// Wire format, version 1. Integers are big-endian; every length is checked
// against the remaining input and its bound before anything is allocated.
//
//	size  field
//	1     version = 1
//	1     member id length M (1..64)
//	M     member id
//	32    WireGuard public key (Curve25519)
//	8     not_before, Unix seconds (int64)
//	8     not_after,  Unix seconds (int64)
//	16    nonce (random; distinguishes attestations of the same key)
//	1     certificate count C (1..4), leaf first, then intermediates
//	C×    2-byte DER length L (1..4096), L bytes of DER
//	2     signature length S (1..1024)
//	S     signature
//
// The signed message is the domain-separation string AttestationDomain
// followed by the bytes from "version" through "nonce" (the certificates and
// the signature are not signed: the chain is checked separately and the leaf
// key is what verifies). ECDSA and RSA (PKCS#1 v1.5) sign its SHA-256 digest;
// Ed25519 signs the message itself. A future version gets a new version byte
// and a new domain string.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/crypto/curve25519"
)

// AttestationDomain separates attestation signatures from every other
// signature the member identity makes (TLS, blocks, policy votes).
const AttestationDomain = "memberd wireguard attestation v1\x00"

const (
	attestationVersion = 1
	maxMemberIDLen     = 64
	maxChainCerts      = 4
	maxCertLen         = 4096
	maxSigLen          = 1024
	// MaxAttestationSize bounds an encoded attestation.
	MaxAttestationSize = 2 + maxMemberIDLen + 32 + 16 + 16 + 1 + maxChainCerts*(2+maxCertLen) + 2 + maxSigLen
)

var (
	// ErrBadAttestation: the bytes are not a well-formed attestation.
	ErrBadAttestation = errors.New("malformed WireGuard key attestation")
	// ErrAttestationSignature: the signature does not verify with the leaf certificate's key.
	ErrAttestationSignature = errors.New("WireGuard key attestation signature does not verify")
	// ErrAttestationExpired: outside not_before..not_after (or the leaf certificate's validity).
	ErrAttestationExpired = errors.New("WireGuard key attestation expired or not yet valid")
	// ErrAttestationIdentity: the certificate chain is not an identity of the named member in the current policy.
	ErrAttestationIdentity = errors.New("WireGuard key attestation is not signed by an identity of that member")
	// ErrAttestationSender: the attestation arrived from a different member than it names.
	ErrAttestationSender = errors.New("WireGuard key attestation sent by another member")
)

// Key is a Curve25519 key as WireGuard uses it.
type Key [32]byte

// String returns the key in hex, as WireGuard's UAPI spells it.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether the key is all zeros (unset).
func (k Key) IsZero() bool { return k == Key{} }

// NewPrivateKey makes a fresh WireGuard private key.
func NewPrivateKey() (Key, error) {
	var k Key
	if _, err := io.ReadFull(rand.Reader, k[:]); err != nil {
		return Key{}, fmt.Errorf("generate WireGuard key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// PublicKey derives the public key of private key k.
func (k Key) PublicKey() Key {
	var pub Key
	p, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil { // only for low-order points, impossible with the base point
		panic(err)
	}
	copy(pub[:], p)
	return pub
}

// Attestation binds a WireGuard public key to a member for a time window,
// signed by the member's identity.
type Attestation struct {
	Member    string
	PublicKey Key
	NotBefore time.Time
	NotAfter  time.Time
	Nonce     [16]byte
	Chain     []*x509.Certificate // leaf first
	Signature []byte
}

// signedPart encodes version..nonce.
func (a *Attestation) signedPart() []byte {
	b := make([]byte, 0, 2+len(a.Member)+32+32)
	b = append(b, attestationVersion, byte(len(a.Member)))
	b = append(b, a.Member...)
	b = append(b, a.PublicKey[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(a.NotBefore.Unix()))
	b = binary.BigEndian.AppendUint64(b, uint64(a.NotAfter.Unix()))
	b = append(b, a.Nonce[:]...)
	return b
}

func signedMessage(part []byte) []byte {
	return append([]byte(AttestationDomain), part...)
}

// SignAttestation makes and signs an attestation of pub for member, valid
// from notBefore to notAfter. chain is the signer's certificate chain, leaf
// first; its leaf must hold signer's public key.
func SignAttestation(signer crypto.Signer, chain []*x509.Certificate, member string, pub Key, notBefore, notAfter time.Time) (*Attestation, error) {
	if len(member) == 0 || len(member) > maxMemberIDLen {
		return nil, fmt.Errorf("%w: member id %q must be 1..%d bytes", ErrBadAttestation, member, maxMemberIDLen)
	}
	if len(chain) == 0 || len(chain) > maxChainCerts {
		return nil, fmt.Errorf("%w: certificate chain must have 1..%d certificates, has %d", ErrBadAttestation, maxChainCerts, len(chain))
	}
	for _, c := range chain {
		if len(c.Raw) == 0 || len(c.Raw) > maxCertLen {
			return nil, fmt.Errorf("%w: certificate %q is %d bytes, limit %d", ErrBadAttestation, c.Subject, len(c.Raw), maxCertLen)
		}
	}
	if !publicKeysEqual(signer.Public(), chain[0].PublicKey) {
		return nil, fmt.Errorf("%w: the leaf certificate %q does not hold the signing key: check the identity key and certificate pair", ErrBadAttestation, chain[0].Subject)
	}
	a := &Attestation{Member: member, PublicKey: pub, NotBefore: notBefore.Truncate(time.Second), NotAfter: notAfter.Truncate(time.Second), Chain: chain}
	if _, err := io.ReadFull(rand.Reader, a.Nonce[:]); err != nil {
		return nil, fmt.Errorf("attestation nonce: %w", err)
	}
	msg := signedMessage(a.signedPart())
	var sig []byte
	var err error
	switch signer.Public().(type) {
	case ed25519.PublicKey:
		sig, err = signer.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		d := sha256.Sum256(msg)
		sig, err = signer.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return nil, fmt.Errorf("sign WireGuard key attestation for %s: %w", member, err)
	}
	if len(sig) == 0 || len(sig) > maxSigLen {
		return nil, fmt.Errorf("%w: signature of %d bytes", ErrBadAttestation, len(sig))
	}
	a.Signature = sig
	return a, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// Marshal encodes the attestation in the version 1 wire format.
func (a *Attestation) Marshal() []byte {
	b := a.signedPart()
	b = append(b, byte(len(a.Chain)))
	for _, c := range a.Chain {
		b = binary.BigEndian.AppendUint16(b, uint16(len(c.Raw)))
		b = append(b, c.Raw...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.Signature)))
	return append(b, a.Signature...)
}

// ParseAttestation decodes an attestation. It checks only the form (lengths,
// version, certificate syntax), not the signature or trust: call Verify.
func ParseAttestation(b []byte) (*Attestation, error) {
	if len(b) > MaxAttestationSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBadAttestation, len(b), MaxAttestationSize)
	}
	r := reader{b: b}
	if v := r.u8(); v != attestationVersion {
		if r.err {
			return nil, fmt.Errorf("%w: empty", ErrBadAttestation)
		}
		return nil, fmt.Errorf("%w: unsupported version %d (this memberd speaks %d): upgrade memberd", ErrBadAttestation, v, attestationVersion)
	}
	a := &Attestation{}
	ml := int(r.u8())
	if ml == 0 || ml > maxMemberIDLen {
		return nil, fmt.Errorf("%w: member id length %d", ErrBadAttestation, ml)
	}
	a.Member = string(r.bytes(ml))
	copy(a.PublicKey[:], r.bytes(32))
	a.NotBefore = time.Unix(int64(r.u64()), 0)
	a.NotAfter = time.Unix(int64(r.u64()), 0)
	copy(a.Nonce[:], r.bytes(16))
	nc := int(r.u8())
	if !r.err && (nc == 0 || nc > maxChainCerts) {
		return nil, fmt.Errorf("%w: %d certificates, want 1..%d", ErrBadAttestation, nc, maxChainCerts)
	}
	for i := 0; i < nc && !r.err; i++ {
		l := int(r.u16())
		if !r.err && (l == 0 || l > maxCertLen) {
			return nil, fmt.Errorf("%w: certificate %d length %d", ErrBadAttestation, i, l)
		}
		der := r.bytes(l)
		if r.err {
			break
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", ErrBadAttestation, i, err)
		}
		a.Chain = append(a.Chain, c)
	}
	sl := int(r.u16())
	if !r.err && (sl == 0 || sl > maxSigLen) {
		return nil, fmt.Errorf("%w: signature length %d", ErrBadAttestation, sl)
	}
	a.Signature = bytes.Clone(r.bytes(sl))
	if r.err {
		return nil, fmt.Errorf("%w: truncated", ErrBadAttestation)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadAttestation, len(r.b))
	}
	return a, nil
}

// Verify checks the attestation completely: the signature with the leaf
// certificate's key, the time window (and the leaf's own validity) at now,
// and that auth accepts the chain as an identity of a.Member.
func (a *Attestation) Verify(auth Authority, now time.Time) error {
	if len(a.Chain) == 0 {
		return fmt.Errorf("%w: no certificate", ErrBadAttestation)
	}
	leaf := a.Chain[0]
	msg := signedMessage(a.signedPart())
	var err error
	switch pub := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub, d[:], a.Signature) {
			err = errors.New("ECDSA signature mismatch")
		}
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], a.Signature)
	case ed25519.PublicKey:
		if !ed25519.Verify(pub, msg, a.Signature) {
			err = errors.New("Ed25519 signature mismatch")
		}
	default:
		err = fmt.Errorf("unsupported key type %T", pub)
	}
	if err != nil {
		return fmt.Errorf("%w (member %s, certificate %q): %v", ErrAttestationSignature, a.Member, leaf.Subject, err)
	}
	if now.Before(a.NotBefore) || !now.Before(a.NotAfter) {
		return fmt.Errorf("%w: member %s key valid %s..%s, now %s: check the clocks of both appliances", ErrAttestationExpired, a.Member, a.NotBefore.UTC().Format(time.RFC3339), a.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return fmt.Errorf("%w: member %s identity certificate %q valid %s..%s", ErrAttestationExpired, a.Member, leaf.Subject, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if err := auth.VerifyMemberCert(a.Member, a.Chain); err != nil {
		return fmt.Errorf("%w %s: %v", ErrAttestationIdentity, a.Member, err)
	}
	return nil
}

// Expiry is when the attestation stops being usable: not_after or the leaf
// certificate's expiry, whichever is first.
func (a *Attestation) Expiry() time.Time {
	if len(a.Chain) > 0 && a.Chain[0].NotAfter.Before(a.NotAfter) {
		return a.Chain[0].NotAfter
	}
	return a.NotAfter
}

// reader is a bounds-checked cursor; after the first short read every read
// returns zero values and err stays set.
type reader struct {
	b   []byte
	err bool
}

func (r *reader) bytes(n int) []byte {
	if r.err || n < 0 || len(r.b) < n {
		r.err = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() byte {
	v := r.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u16() uint16 {
	v := r.bytes(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (r *reader) u64() uint64 {
	v := r.bytes(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

package policy

// Bundle file format (version 1):
//
//	<document bytes: UTF-8 YAML, ending in "\n", never containing the marker line>
//	#--- memberd signatures v1 ---\n          (optional when there is no signature)
//	#sig <member-id> <key-id> <base64 std signature>\n   (0..MaxSignatures lines)
//	#cfgsig <member-id> <key-id> <base64 std bytes>\n     (0..MaxSignatures lines)
//
// Everything after the marker must be signature lines; the whole file is at
// most MaxBundleSize bytes. The trailer is made of YAML comments, so the
// bundle is the same YAML document as the bytes it signs. A #cfgsig line
// carries an admin's Fabric signature (a marshalled common.ConfigSignature)
// on the channel ConfigUpdate this version derives from the config in
// force; the policy package keeps it opaque (ConfigSignature) and it is
// not part of the version's hash. Parsers older than #cfgsig refuse it.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Limits of the bundle format, checked before allocating.
const (
	MaxBundleSize   = 4 << 20
	MaxSignatures   = 1024
	maxSigB64       = 2048
	maxCfgSigB64    = 16 << 10
	signatureMarker = "#--- memberd signatures v1 ---"
	sigPrefix       = "#sig "
	cfgSigPrefix    = "#cfgsig "
	digestDomain    = "memberd policy signature v1\x00"
)

// Hash identifies a policy version: SHA-256 of its exact document bytes
// (signatures excluded). Its text form is "sha256:<64 hex digits>".
type Hash [32]byte

// HashDocument returns the Hash of document bytes.
func HashDocument(doc []byte) Hash { return sha256.Sum256(doc) }

func (h Hash) String() string { return "sha256:" + hex.EncodeToString(h[:]) }

// IsZero reports whether h is the zero hash.
func (h Hash) IsZero() bool { return h == Hash{} }

// ParseHash parses "sha256:<64 hex digits>".
func ParseHash(s string) (Hash, error) {
	var h Hash
	hx, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hx) != 64 {
		return h, fmt.Errorf("bad hash %q: want sha256:<64 hex digits>", s)
	}
	if _, err := hex.Decode(h[:], []byte(hx)); err != nil {
		return h, fmt.Errorf("bad hash %q: %v", s, err)
	}
	return h, nil
}

// SignedDigest is what admins sign: SHA-256 over a domain separator and the
// exact document bytes.
func SignedDigest(doc []byte) []byte {
	h := sha256.New()
	io.WriteString(h, digestDomain)
	h.Write(doc)
	return h.Sum(nil)
}

// Signature is one admin's signature over SignedDigest of the document.
type Signature struct {
	Member string
	KeyID  string
	Sig    []byte
}

// Admin names the signing admin.
func (s Signature) Admin() AdminRef { return AdminRef{Member: s.Member, KeyID: s.KeyID} }

// ConfigSignature is one admin's Fabric signature on the channel
// ConfigUpdate the version derives: Raw is a marshalled
// common.ConfigSignature, opaque to this package (node/channelconfig makes
// and checks it).
type ConfigSignature struct {
	Member string
	KeyID  string
	Raw    []byte
}

// Admin names the signing admin.
func (s ConfigSignature) Admin() AdminRef { return AdminRef{Member: s.Member, KeyID: s.KeyID} }

// splitBundle separates document bytes from signature lines.
func splitBundle(data []byte) (doc []byte, sigs []Signature, cfgSigs []ConfigSignature, err error) {
	if len(data) > MaxBundleSize {
		return nil, nil, nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxBundleSize)
	}
	marker := []byte(signatureMarker + "\n")
	var trailer []byte
	switch {
	case bytes.HasPrefix(data, marker):
		return nil, nil, nil, fmt.Errorf("%w: the bundle has signatures but no document", ErrMalformed)
	default:
		if i := bytes.Index(data, append([]byte{'\n'}, marker...)); i >= 0 {
			doc, trailer = data[:i+1], data[i+1+len(marker):]
		} else {
			doc = data
			if bytes.Contains(data, []byte(signatureMarker)) {
				return nil, nil, nil, fmt.Errorf("%w: signature marker %q must be a line of its own after the document", ErrMalformed, signatureMarker)
			}
		}
	}
	if len(doc) == 0 || doc[len(doc)-1] != '\n' {
		return nil, nil, nil, fmt.Errorf("%w: the document must end with a newline", ErrMalformed)
	}
	for lineNo := 1; len(trailer) > 0; lineNo++ {
		line, rest, ok := bytes.Cut(trailer, []byte{'\n'})
		if !ok {
			return nil, nil, nil, fmt.Errorf("%w: signature line %d does not end with a newline (truncated file?)", ErrMalformed, lineNo)
		}
		trailer = rest
		if len(sigs) == MaxSignatures || len(cfgSigs) == MaxSignatures {
			return nil, nil, nil, fmt.Errorf("%w: more than %d signatures", ErrMalformed, MaxSignatures)
		}
		if bytes.HasPrefix(line, []byte(cfgSigPrefix)) {
			m, k, raw, err := parseLine(string(line), cfgSigPrefix, maxCfgSigB64)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("%w: signature line %d: %v", ErrMalformed, lineNo, err)
			}
			cfgSigs = append(cfgSigs, ConfigSignature{Member: m, KeyID: k, Raw: raw})
			continue
		}
		s, err := parseSigLine(string(line))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: signature line %d: %v", ErrMalformed, lineNo, err)
		}
		sigs = append(sigs, s)
	}
	return doc, sigs, cfgSigs, nil
}

func parseSigLine(line string) (Signature, error) {
	m, k, sig, err := parseLine(line, sigPrefix, maxSigB64)
	if err != nil {
		return Signature{}, err
	}
	return Signature{Member: m, KeyID: k, Sig: sig}, nil
}

// parseLine parses "<prefix><member> <key-id> <base64>".
func parseLine(line, prefix string, maxB64 int) (member, keyID string, raw []byte, err error) {
	rest, ok := strings.CutPrefix(line, prefix)
	if !ok {
		return "", "", nil, fmt.Errorf("want %q<member> <key-id> <base64>, got %.40q", prefix, line)
	}
	f := strings.Split(rest, " ")
	if len(f) != 3 {
		return "", "", nil, fmt.Errorf("want 3 space-separated fields after %q, got %d", prefix, len(f))
	}
	if !validID(f[0]) || !validID(f[1]) {
		return "", "", nil, fmt.Errorf("bad member or key id %q/%q", f[0], f[1])
	}
	if len(f[2]) > maxB64 {
		return "", "", nil, fmt.Errorf("signature longer than %d base64 characters", maxB64)
	}
	raw, err = base64.StdEncoding.DecodeString(f[2])
	if err != nil || len(raw) == 0 {
		return "", "", nil, fmt.Errorf("signature is not base64: %v", err)
	}
	return f[0], f[1], raw, nil
}

// marshalBundle renders document bytes and signatures as a bundle file.
func marshalBundle(doc []byte, sigs []Signature, cfgSigs []ConfigSignature) []byte {
	var b bytes.Buffer
	b.Write(doc)
	if len(sigs)+len(cfgSigs) > 0 {
		b.WriteString(signatureMarker + "\n")
		for _, s := range sigs {
			fmt.Fprintf(&b, "%s%s %s %s\n", sigPrefix, s.Member, s.KeyID, base64.StdEncoding.EncodeToString(s.Sig))
		}
		for _, s := range cfgSigs {
			fmt.Fprintf(&b, "%s%s %s %s\n", cfgSigPrefix, s.Member, s.KeyID, base64.StdEncoding.EncodeToString(s.Raw))
		}
	}
	return b.Bytes()
}

// SignDocument signs SignedDigest(doc) with s: ECDSA and RSA (PKCS #1 v1.5)
// keys sign the digest as a SHA-256 hash, Ed25519 keys sign it as a message.
func SignDocument(s crypto.Signer, doc []byte) ([]byte, error) {
	d := SignedDigest(doc)
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := s.Public().(ed25519.PublicKey); ok {
		opts = crypto.Hash(0)
	}
	sig, err := s.Sign(rand.Reader, d, opts)
	if err != nil {
		return nil, fmt.Errorf("signing policy document: %w", err)
	}
	return sig, nil
}

var errBadSignature = errors.New("signature does not verify over this document (forged, or made over other bytes)")

// verifySignature checks sig over SignedDigest(doc) with pub.
func verifySignature(pub crypto.PublicKey, doc, sig []byte) error {
	d := SignedDigest(doc)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, d, sig) {
			return errBadSignature
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(k, d, sig) {
			return errBadSignature
		}
	case *rsa.PublicKey:
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, d, sig) != nil {
			return errBadSignature
		}
	default:
		return fmt.Errorf("unsupported key type %T", pub)
	}
	return nil
}

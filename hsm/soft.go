package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
)

// SoftOptions configures a software (file) key. The zero value refuses to
// open anything: software keys are for the demo and development only.
type SoftOptions struct {
	// AllowInsecure must be true to use a key from a file. Default false.
	AllowInsecure bool
	// Warnings receives a warning line on every use of the key; default
	// os.Stderr.
	Warnings io.Writer
	// Logger also gets the warning (level WARN); nil discards.
	Logger *slog.Logger
}

type softSigner struct {
	path   string
	key    *ecdsa.PrivateKey
	warn   io.Writer
	log    *slog.Logger
	closed atomic.Bool
}

var _ Signer = (*softSigner)(nil)

// OpenSoftSigner opens an ECDSA P-256 private key from a PEM file (SEC 1
// "EC PRIVATE KEY" or PKCS #8). Development only: refused unless
// opts.AllowInsecure, and every Sign prints a warning naming the file.
func OpenSoftSigner(pemPath string, opts *SoftOptions) (Signer, error) {
	if opts == nil || !opts.AllowInsecure {
		return nil, fmt.Errorf("%w: %s is a key in a file, for development only; use an HSM key (pkcs11:...) or pass the explicit development flag", ErrInsecureRefused, pemPath)
	}
	b, err := os.ReadFile(pemPath)
	if err != nil {
		return nil, fmt.Errorf("%w: software key %s: %v", ErrKeyNotFound, pemPath, err)
	}
	key, err := parseSoftKey(b)
	if err != nil {
		return nil, fmt.Errorf("software key %s: %w", pemPath, err)
	}
	s := &softSigner{path: pemPath, key: key, warn: opts.Warnings, log: opts.Logger}
	if s.warn == nil {
		s.warn = os.Stderr
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

func parseSoftKey(b []byte) (*ecdsa.PrivateKey, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%w: no EC PRIVATE KEY or PRIVATE KEY PEM block", ErrKeyNotFound)
		}
		var k any
		var err error
		switch blk.Type {
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrWrongKeyType, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok || ek.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: want an ECDSA P-256 key", ErrWrongKeyType)
		}
		return ek, nil
	}
}

// GenerateSoftKey writes a new ECDSA P-256 key to pemPath (mode 0600,
// refusing to overwrite) and opens it. Development only, like
// OpenSoftSigner.
func GenerateSoftKey(pemPath string, opts *SoftOptions) (Signer, error) {
	if opts == nil || !opts.AllowInsecure {
		return nil, fmt.Errorf("%w: generating a key in file %s is for development only", ErrInsecureRefused, pemPath)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(pemPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: %s exists; remove it or choose another path", ErrKeyExists, pemPath)
		}
		return nil, err
	}
	if err := pem.Encode(f, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return OpenSoftSigner(pemPath, opts)
}

func (s *softSigner) Public() crypto.PublicKey { return &s.key.PublicKey }

func (s *softSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("software key %s: %w", s.path, ErrClosed)
	}
	if err := checkDigest(digest, opts); err != nil {
		return nil, err
	}
	fmt.Fprintf(s.warn, "WARNING: INSECURE software key %s used to sign (development only, not an HSM)\n", s.path)
	s.log.Warn("INSECURE software key used to sign (development only)", "key_file", s.path)
	if r == nil {
		r = rand.Reader
	}
	der, err := ecdsa.SignASN1(r, s.key, digest)
	if err != nil {
		return nil, err
	}
	return ToLowS(der)
}

func (s *softSigner) Close() error { s.closed.Store(true); return nil }

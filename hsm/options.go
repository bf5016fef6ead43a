package hsm

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// DefaultPoolSize is the number of PKCS#11 sessions a signer keeps at most
// when Options.PoolSize is 0.
const DefaultPoolSize = 8

// MaxPoolSize bounds Options.PoolSize.
const MaxPoolSize = 256

// Options configures access to PKCS#11 keys. A nil *Options means the zero
// value: pin-value refused, DefaultPoolSize sessions, no logging.
type Options struct {
	// AllowPINValue accepts a PIN written in the URI (pin-value=). For
	// development only; default false (refused with ErrPINValueRefused).
	AllowPINValue bool
	// PoolSize is the maximum number of sessions a signer opens to sign
	// concurrently. 0 means DefaultPoolSize; at most MaxPoolSize.
	PoolSize int
	// ModulePath is used when the URI has no module-path. Default "" (the
	// URI must then name the module).
	ModulePath string
	// ModuleEnv are NAME=value pairs in force while the module is
	// initialised, for modules that read their configuration only from the
	// environment (SoftHSM2: SOFTHSM2_CONF=/path/softhsm2.conf). They are
	// set around C_Initialize and then restored, so the caller need not
	// change the process environment. A module is initialised once per
	// process: asking for one already in use with other ModuleEnv fails.
	ModuleEnv []string
	// AllowSoftKeys lets OpenKey open "file:" software keys (dev only).
	// Default false (refused with ErrInsecureRefused).
	AllowSoftKeys bool
	// SoftWarnings is where software keys print their per-use warning
	// (default os.Stderr). Only used with AllowSoftKeys.
	SoftWarnings io.Writer
	// Logger receives operational logs (session reopened, ...); nil discards.
	Logger *slog.Logger
}

// Validate checks the options.
func (o *Options) Validate() error {
	if o == nil {
		return nil
	}
	if o.PoolSize < 0 || o.PoolSize > MaxPoolSize {
		return fmt.Errorf("hsm options: PoolSize %d out of range 0..%d", o.PoolSize, MaxPoolSize)
	}
	for _, kv := range o.ModuleEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("hsm options: ModuleEnv entry %q is not NAME=value", kv)
		}
	}
	return nil
}

func (o *Options) moduleEnv() []string {
	if o == nil {
		return nil
	}
	return o.ModuleEnv
}

func (o *Options) poolSize() int {
	if o == nil || o.PoolSize == 0 {
		return DefaultPoolSize
	}
	return o.PoolSize
}

func (o *Options) logger() *slog.Logger {
	if o == nil || o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Signer is a crypto.Signer that holds HSM resources (sessions, module
// reference). Close releases them; it is idempotent, and Sign after Close
// fails with ErrClosed. Sign is safe for concurrent use.
type Signer interface {
	crypto.Signer
	Close() error
}

// OpenKey opens a key by reference:
//   - "pkcs11:..." opens an HSM key with OpenSigner;
//   - "file:/path/key.pem" opens a software key with OpenSoftSigner, only if
//     opts.AllowSoftKeys (development only), else ErrInsecureRefused.
func OpenKey(ref string, opts *Options) (Signer, error) {
	switch {
	case strings.HasPrefix(strings.ToLower(ref), "pkcs11:"):
		return OpenSigner(ref, opts)
	case strings.HasPrefix(ref, "file:"):
		so := &SoftOptions{}
		if opts != nil {
			so.AllowInsecure = opts.AllowSoftKeys
			so.Warnings = opts.SoftWarnings
			so.Logger = opts.Logger
		}
		return OpenSoftSigner(strings.TrimPrefix(ref, "file:"), so)
	}
	return nil, fmt.Errorf("%w: key reference %q: want pkcs11:... (HSM) or file:/path.pem (development only)", ErrBadURI, redact(ref))
}

// readPIN resolves the PIN of a URI: pin-source (file:/path, /path, or
// cred:NAME for a systemd credential in $CREDENTIALS_DIRECTORY), or
// pin-value when allowed. An empty PIN means "no login".
func readPIN(u *URI, opts *Options) (string, error) {
	if u.PINValue != "" {
		if opts == nil || !opts.AllowPINValue {
			return "", fmt.Errorf("%w: %s: put the PIN in a file readable only by memberd and use pin-source=file:/path (pin-value is for development only)", ErrPINValueRefused, u.Redacted())
		}
		if u.PINSource != "" {
			return "", fmt.Errorf("%w: %s: both pin-value and pin-source given; use one", ErrBadURI, u.Redacted())
		}
		return u.PINValue, nil
	}
	src := u.PINSource
	if src == "" {
		return "", nil
	}
	var path string
	switch {
	case strings.HasPrefix(src, "file:"):
		path = strings.TrimPrefix(src, "file:")
		path = strings.TrimPrefix(path, "//") // file:///etc/x -> /etc/x
	case strings.HasPrefix(src, "cred:"):
		dir := os.Getenv("CREDENTIALS_DIRECTORY")
		name := strings.TrimPrefix(src, "cred:")
		if dir == "" {
			return "", fmt.Errorf("%w: pin-source=%s names a systemd credential but CREDENTIALS_DIRECTORY is not set: add LoadCredential=%s:/path to the unit", ErrPINSource, src, name)
		}
		if name == "" || strings.ContainsAny(name, "/") {
			return "", fmt.Errorf("%w: pin-source=%s: invalid credential name", ErrPINSource, src)
		}
		path = dir + "/" + name
	case strings.HasPrefix(src, "/"):
		path = src
	default:
		return "", fmt.Errorf("%w: pin-source=%q: want file:/path, /path or cred:NAME", ErrPINSource, src)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: pin-source %s: %v: create the file with the PIN (mode 0600)", ErrPINSource, path, err)
	}
	// systemd hands credentials over 0440 in a folder only the service can
	// enter: warn about modes of PIN files only.
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 && !strings.HasPrefix(src, "cred:") {
		opts.logger().Warn("HSM PIN file is readable by group or others; chmod 600 it", "path", path, "mode", fi.Mode().Perm().String())
	}
	pin := strings.TrimRight(string(b), "\r\n")
	if pin == "" {
		return "", fmt.Errorf("%w: pin-source %s is empty", ErrPINSource, path)
	}
	return pin, nil
}

// SelfTest signs a fixed digest with s and verifies the signature with s's
// public key (ECDSA, low S). It returns nil when the key works.
func SelfTest(ctx context.Context, s crypto.Signer) error {
	return selfTest(ctx, s)
}

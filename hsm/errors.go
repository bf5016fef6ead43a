package hsm

import "errors"

// Sentinel errors. Every error returned by this package wraps at most one of
// them (test with errors.Is) and names the module, token, key or file at
// fault, and what to do.
var (
	// ErrBadURI: a key reference is not a valid PKCS#11 URI (RFC 7512) or
	// lacks what the operation needs (e.g. token=, object= or id=).
	ErrBadURI = errors.New("invalid PKCS#11 URI")
	// ErrPINValueRefused: the URI carries pin-value and the dev flag is off.
	ErrPINValueRefused = errors.New("PIN in the URI (pin-value) refused")
	// ErrPINSource: the PIN could not be read from its pin-source.
	ErrPINSource = errors.New("cannot read HSM PIN")
	// ErrModuleNotFound: the PKCS#11 module cannot be loaded or initialised.
	ErrModuleNotFound = errors.New("PKCS#11 module not found")
	// ErrTokenNotFound: no token with the URI's label is present.
	ErrTokenNotFound = errors.New("HSM token not found")
	// ErrWrongPIN: the token refused the PIN (or the PIN is locked).
	ErrWrongPIN = errors.New("HSM PIN incorrect")
	// ErrKeyNotFound: no private key matches the URI's object/id.
	ErrKeyNotFound = errors.New("HSM key not found")
	// ErrKeyExists: keygen would overwrite or duplicate a key.
	ErrKeyExists = errors.New("HSM key already exists")
	// ErrAmbiguousKey: more than one private key matches the URI.
	ErrAmbiguousKey = errors.New("HSM key reference is ambiguous")
	// ErrWrongKeyType: the key is not an ECDSA P-256 key.
	ErrWrongKeyType = errors.New("HSM key has an unsupported type")
	// ErrInsecureRefused: a software (file) key was requested without the
	// explicit development flag.
	ErrInsecureRefused = errors.New("software key refused outside development mode")
	// ErrNoCgo: this binary was built without cgo, so PKCS#11 is unavailable.
	ErrNoCgo = errors.New("PKCS#11 support not compiled in (build with CGO_ENABLED=1)")
	// ErrClosed: the signer was closed.
	ErrClosed = errors.New("closed")
	// ErrSign: the HSM failed to sign.
	ErrSign = errors.New("HSM signing failed")
)

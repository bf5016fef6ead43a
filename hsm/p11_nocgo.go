//go:build !cgo

package hsm

import "fmt"

// OpenSigner needs cgo; this build has none.
func OpenSigner(keyURI string, opts *Options) (Signer, error) {
	return nil, fmt.Errorf("opening %s: %w", redact(keyURI), ErrNoCgo)
}

// GenerateKey needs cgo; this build has none.
func GenerateKey(keyURI string, opts *Options) (*KeyInfo, error) {
	return nil, fmt.Errorf("generating %s: %w", redact(keyURI), ErrNoCgo)
}

// ListKeys needs cgo; this build has none.
func ListKeys(tokenURI string, opts *Options) ([]KeyInfo, error) {
	return nil, fmt.Errorf("listing %s: %w", redact(tokenURI), ErrNoCgo)
}

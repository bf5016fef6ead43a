// Package identity is the appliance's identity folder: the certificate and
// HSM key it presents and signs with, loaded from a directory and switched
// live when a new certificate appears.
//
// Layout:
//
//	/etc/memberd/identity/
//	  identity.yaml   keys the appliance may use (PKCS#11 URIs):
//	                    keys:
//	                      - pkcs11:token=member-a;object=tls-2026?module-path=...&pin-source=file:...
//	                      - pkcs11:token=member-a;object=tls-2027?module-path=...&pin-source=file:...
//	                  (or "key: pkcs11:..." for a single key)
//	  *.pem, *.crt    certificate files, each: the leaf first, then its chain
//
// The identity is the certificate, among all certificate files, whose public
// key matches one of the listed keys and that is valid now; when several
// are, the one with the latest NotBefore wins (then the latest NotAfter,
// then the file name). Rotation: generate a key, add its URI to
// identity.yaml, have the CSR signed, drop the certificate in the folder;
// the provider switches to it and notifies subscribers. Keys removed from
// identity.yaml stay open until Close, so holders of the old identity can
// finish.
//
// The keys are opened through hsm (PKCS#11, or files for development); the
// folder is watched through internal/dirwatch.
package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/dirwatch"
)

// File is the name of the key list in an identity folder.
const File = "identity.yaml"

// Sentinel errors; every error of this package wraps at most one of them
// and names the folder or file at fault.
var (
	// ErrNoIdentity: an identity folder holds no certificate matching a key.
	ErrNoIdentity = errors.New("no usable identity")
	// ErrClosed: the provider was closed.
	ErrClosed = errors.New("identity provider closed")
)

// Identity is an immutable snapshot: a certificate and the HSM key it
// certifies.
type Identity struct {
	KeyURI      string              // URI of the key (as listed in identity.yaml)
	Signer      crypto.Signer       // the key; do not Close it (the provider owns it)
	Certificate *x509.Certificate   // the leaf
	Chain       []*x509.Certificate // the rest of the file after the leaf
	File        string              // certificate file it came from

	tlsCert *tls.Certificate // built once by the provider
}

// TLSCertificate returns the identity as a tls.Certificate (leaf, then
// chain) whose PrivateKey is the HSM signer.
func (id *Identity) TLSCertificate() tls.Certificate {
	if id.tlsCert != nil {
		return *id.tlsCert
	}
	return buildTLSCertificate(id)
}

func buildTLSCertificate(id *Identity) tls.Certificate {
	c := tls.Certificate{PrivateKey: id.Signer, Leaf: id.Certificate}
	c.Certificate = append(c.Certificate, id.Certificate.Raw)
	for _, x := range id.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// GetCertificate is for tls.Config.GetCertificate: it returns the current
// identity at each handshake, so servers follow rotations without restart.
func (p *Provider) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return p.currentTLS()
}

// GetClientCertificate is for tls.Config.GetClientCertificate (mTLS
// clients): the current identity at each handshake.
func (p *Provider) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return p.currentTLS()
}

func (p *Provider) currentTLS() (*tls.Certificate, error) {
	id := p.cur.Load()
	if id == nil || p.closed.Load() {
		return nil, fmt.Errorf("identity folder %s: %w", p.dir, ErrNoIdentity)
	}
	return id.tlsCert, nil
}

// Options configures a Provider. nil means defaults.
type Options struct {
	// Keys opens the key URIs (PIN, pool, dev flags). nil = defaults.
	Keys *hsm.Options
	// Logger; nil discards.
	Logger *slog.Logger
	// Now is the clock for certificate validity; default time.Now.
	Now func() time.Time
	// Debounce is how long Run waits after a file event before reloading
	// (editors write in several steps); default 200ms. A folder that never
	// goes quiet is still reloaded every max(10×Debounce, 200ms).
	Debounce time.Duration
	// Recheck is how often Run re-evaluates the folder without events
	// (certificates becoming valid or expiring); default 1 minute.
	Recheck time.Duration
	// ReloadOnSIGHUP makes Run reload the folder on SIGHUP.
	ReloadOnSIGHUP bool
	// OpenKey opens a key reference; default hsm.OpenKey (tests may
	// replace it).
	OpenKey func(ref string, opts *hsm.Options) (hsm.Signer, error)
}

// Validate checks the options.
func (o *Options) Validate() error {
	if o == nil {
		return nil
	}
	if o.Debounce < 0 || o.Recheck < 0 {
		return errors.New("identity options: Debounce and Recheck must not be negative")
	}
	return o.Keys.Validate()
}

// Provider holds the current identity of an identity folder and switches
// it atomically when the folder changes. Current is safe from any
// goroutine.
type Provider struct {
	dir  string
	opts Options
	log  *slog.Logger
	dw   *dirwatch.Watcher // immutable

	reloadMu sync.Mutex            // serialises Reload
	signers  map[string]hsm.Signer // by key URI; guarded by reloadMu
	keyErrs  map[string]string     // last open error per URI, to log once; guarded by reloadMu

	subsMu  sync.Mutex // guards subs, nextSub and the swap of cur
	cur     atomic.Pointer[Identity]
	subs    map[int]func(old, new *Identity)
	nextSub int

	closed atomic.Bool
}

// NewProvider loads the identity folder dir. It fails when the folder
// yields no usable identity.
func NewProvider(dir string, opts *Options) (*Provider, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	p := &Provider{dir: dir, signers: map[string]hsm.Signer{}, keyErrs: map[string]string{},
		subs: map[int]func(old, new *Identity){}}
	if opts != nil {
		p.opts = *opts
	}
	if p.opts.Logger == nil {
		p.opts.Logger = slog.New(slog.DiscardHandler)
	}
	p.log = p.opts.Logger
	if p.opts.Now == nil {
		p.opts.Now = time.Now
	}
	if p.opts.Debounce == 0 {
		p.opts.Debounce = 200 * time.Millisecond
	}
	if p.opts.Recheck == 0 {
		p.opts.Recheck = time.Minute
	}
	if p.opts.OpenKey == nil {
		p.opts.OpenKey = hsm.OpenKey
	}
	dw, err := dirwatch.New(dirwatch.Config{Dir: dir, Name: "identity folder", Debounce: p.opts.Debounce,
		Resync: p.opts.Recheck, ReloadOnSIGHUP: p.opts.ReloadOnSIGHUP, Logger: p.log}, p.read)
	if err != nil {
		return nil, fmt.Errorf("identity folder: %w", err)
	}
	p.dw = dw
	if err := p.Reload(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Current returns the identity in force (never nil after a successful
// NewProvider). Callers should call it on each use (each TLS handshake,
// each block) to follow rotations.
func (p *Provider) Current() *Identity { return p.cur.Load() }

// Subscribe registers fn, called with (old, new) after each switch, in
// order, from the goroutine that reloaded. It returns the identity in force
// at that moment, so that no switch is missed between the two: fn is called
// for every switch after current. cancel unregisters fn.
func (p *Provider) Subscribe(fn func(old, new *Identity)) (current *Identity, cancel func()) {
	p.subsMu.Lock()
	defer p.subsMu.Unlock()
	id := p.nextSub
	p.nextSub++
	p.subs[id] = fn
	return p.cur.Load(), func() {
		p.subsMu.Lock()
		delete(p.subs, id)
		p.subsMu.Unlock()
	}
}

// Reload reads the folder once: opens newly listed keys, picks the
// identity, and switches to it if it changed (then notifies). On any error
// the current identity stays and the error says why.
func (p *Provider) Reload() error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	if p.closed.Load() {
		return fmt.Errorf("identity folder %s: %w", p.dir, ErrClosed)
	}
	next, err := p.load()
	if err != nil {
		return err
	}
	old := p.cur.Load()
	if old != nil && old.KeyURI == next.KeyURI && bytes.Equal(old.Certificate.Raw, next.Certificate.Raw) && sameChain(old.Chain, next.Chain) {
		return nil
	}
	p.log.Info("identity in force", "dir", p.dir, "cert_file", next.File, "subject", next.Certificate.Subject.String(),
		"not_after", next.Certificate.NotAfter.UTC().Format(time.RFC3339), "key", hsm.RedactURI(next.KeyURI))
	p.subsMu.Lock()
	p.cur.Store(next) // under subsMu: Subscribe sees either this one or is notified of it
	ids := make([]int, 0, len(p.subs))
	for id := range p.subs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	fns := make([]func(old, new *Identity), 0, len(ids))
	for _, id := range ids {
		fns = append(fns, p.subs[id])
	}
	p.subsMu.Unlock()
	for _, fn := range fns {
		fn(old, next)
	}
	return nil
}

func sameChain(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
}

// Run watches the folder until ctx is done and reloads on changes (and
// every Recheck). Errors of a reload are logged; the old identity stays.
// It returns ctx's error, ErrClosed once the provider is closed, or an
// error if the folder cannot be watched. The folder itself is watched:
// files in it may be replaced in any way (atomic rename, symlink swap,
// editor).
func (p *Provider) Run(ctx context.Context) error {
	err := p.dw.Run(ctx)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, dirwatch.ErrClosed):
		return fmt.Errorf("identity folder %s: %w", p.dir, ErrClosed)
	}
	return err
}

// read is the dirwatch.ReadFunc.
func (p *Provider) read(why dirwatch.Reason) time.Time {
	if err := p.Reload(); err != nil && !errors.Is(err, ErrClosed) {
		p.log.Warn("identity folder reload failed; keeping the current identity", "dir", p.dir, "trigger", string(why), "error", err.Error())
	}
	return time.Time{}
}

// Close closes every key the provider opened. Idempotent. Identities
// handed out before must not be used to sign after Close.
func (p *Provider) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	p.dw.Close()
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	var errs []error
	for uri, s := range p.signers {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
		delete(p.signers, uri)
	}
	return errors.Join(errs...)
}

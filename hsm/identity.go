package hsm

// Identity folder: the appliance's identity (certificate + HSM key), loaded
// from a directory and switched live when a new certificate appears.
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

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"gopkg.in/yaml.v3"
)

// IdentityFile is the name of the key list in an identity folder.
const IdentityFile = "identity.yaml"

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
func (p *IdentityProvider) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return p.currentTLS()
}

// GetClientCertificate is for tls.Config.GetClientCertificate (mTLS
// clients): the current identity at each handshake.
func (p *IdentityProvider) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return p.currentTLS()
}

func (p *IdentityProvider) currentTLS() (*tls.Certificate, error) {
	id := p.cur.Load()
	if id == nil || p.closed.Load() {
		return nil, fmt.Errorf("identity folder %s: %w", p.dir, ErrNoIdentity)
	}
	return id.tlsCert, nil
}

// IdentityOptions configures an IdentityProvider. nil means defaults.
type IdentityOptions struct {
	// Keys opens the key URIs (PIN, pool, dev flags). nil = defaults.
	Keys *Options
	// Logger; nil discards.
	Logger *slog.Logger
	// Now is the clock for certificate validity; default time.Now.
	Now func() time.Time
	// Debounce is how long Run waits after a file event before reloading
	// (editors write in several steps); default 200ms.
	Debounce time.Duration
	// Recheck is how often Run re-evaluates the folder without events
	// (certificates becoming valid or expiring); default 1 minute.
	Recheck time.Duration
	// OpenKey opens a key reference; default OpenKey (tests may replace it).
	OpenKey func(ref string, opts *Options) (Signer, error)
}

// Validate checks the options.
func (o *IdentityOptions) Validate() error {
	if o == nil {
		return nil
	}
	if o.Debounce < 0 || o.Recheck < 0 {
		return errors.New("identity options: Debounce and Recheck must not be negative")
	}
	return o.Keys.Validate()
}

// IdentityProvider holds the current identity of an identity folder and
// switches it atomically when the folder changes. Current is safe from any
// goroutine.
type IdentityProvider struct {
	dir  string
	opts IdentityOptions
	log  *slog.Logger

	cur atomic.Pointer[Identity]

	reloadMu sync.Mutex        // serialises Reload
	signers  map[string]Signer // by key URI; guarded by reloadMu
	keyErrs  map[string]string // last open error per URI, to log once
	subsMu   sync.Mutex        // guards subs and nextSub
	subs     map[int]func(old, new *Identity)
	nextSub  int
	closed   atomic.Bool
}

// NewIdentityProvider loads the identity folder dir. It fails when the
// folder yields no usable identity.
func NewIdentityProvider(dir string, opts *IdentityOptions) (*IdentityProvider, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	p := &IdentityProvider{dir: dir, signers: map[string]Signer{}, keyErrs: map[string]string{},
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
		p.opts.OpenKey = OpenKey
	}
	if err := p.Reload(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Current returns the identity in force (never nil after a successful
// NewIdentityProvider). Callers should call it on each use (each TLS
// handshake, each block) to follow rotations.
func (p *IdentityProvider) Current() *Identity { return p.cur.Load() }

// Subscribe registers fn, called with (old, new) after each switch, in
// order, from the goroutine that reloaded. cancel unregisters it.
func (p *IdentityProvider) Subscribe(fn func(old, new *Identity)) (cancel func()) {
	p.subsMu.Lock()
	defer p.subsMu.Unlock()
	id := p.nextSub
	p.nextSub++
	p.subs[id] = fn
	return func() {
		p.subsMu.Lock()
		delete(p.subs, id)
		p.subsMu.Unlock()
	}
}

type identityFile struct {
	Key  string   `yaml:"key"`
	Keys []string `yaml:"keys"`
}

// Reload reads the folder once: opens newly listed keys, picks the
// identity, and switches to it if it changed (then notifies). On any error
// the current identity stays and the error says why.
func (p *IdentityProvider) Reload() error {
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
	p.cur.Store(next)
	p.log.Info("identity in force", "dir", p.dir, "cert_file", next.File, "subject", next.Certificate.Subject.String(),
		"not_after", next.Certificate.NotAfter.UTC().Format(time.RFC3339), "key", redact(next.KeyURI))
	p.subsMu.Lock()
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

// maxIdentityFile bounds identity.yaml.
const maxIdentityFile = 64 << 10

// parseIdentityFile reads identity.yaml: "key: URI" and/or "keys: [URI...]";
// unknown fields are an error. It returns the key references, key first.
func parseIdentityFile(b []byte) ([]string, error) {
	if len(b) > maxIdentityFile {
		return nil, fmt.Errorf("larger than %d bytes", maxIdentityFile)
	}
	var f identityFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%v (want 'keys: [pkcs11:...]' or 'key: pkcs11:...')", err)
	}
	uris := f.Keys
	if f.Key != "" {
		uris = append([]string{f.Key}, uris...)
	}
	if len(uris) == 0 {
		return nil, errors.New("lists no key (want 'keys: [pkcs11:...]')")
	}
	for i, u := range uris {
		if u == "" {
			return nil, fmt.Errorf("key %d is empty", i+1)
		}
	}
	return uris, nil
}

// load builds the identity the folder names now. Called with reloadMu.
func (p *IdentityProvider) load() (*Identity, error) {
	idPath := filepath.Join(p.dir, IdentityFile)
	b, err := os.ReadFile(idPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %v: create %s listing the key URIs (keys: [pkcs11:...])", ErrNoIdentity, err, idPath)
	}
	uris, err := parseIdentityFile(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoIdentity, idPath, err)
	}
	// Open keys not yet open.
	for _, uri := range uris {
		if _, ok := p.signers[uri]; ok {
			continue
		}
		s, err := p.opts.OpenKey(uri, p.opts.Keys)
		if err != nil {
			if p.keyErrs[uri] != err.Error() {
				p.log.Warn("identity key cannot be opened; skipping it", "file", idPath, "key", redact(uri), "error", err.Error())
				p.keyErrs[uri] = err.Error()
			}
			continue
		}
		delete(p.keyErrs, uri)
		p.signers[uri] = s
	}
	// Certificates.
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoIdentity, err)
	}
	now := p.opts.Now()
	var best *Identity
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".pem") || strings.HasSuffix(name, ".crt")) {
			continue
		}
		path := filepath.Join(p.dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			p.log.Warn("identity certificate unreadable; ignoring it", "file", path, "error", err.Error())
			continue
		}
		certs, err := ParseCertificatesPEM(data)
		if err != nil {
			p.log.Warn("identity certificate file invalid; ignoring it", "file", path, "error", err.Error())
			continue
		}
		leaf := certs[0]
		uri, s := p.matchKey(uris, leaf.PublicKey)
		if s == nil {
			continue
		}
		if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			continue
		}
		cand := &Identity{KeyURI: uri, Signer: s, Certificate: leaf, Chain: certs[1:], File: path}
		tc := buildTLSCertificate(cand)
		cand.tlsCert = &tc
		if best == nil || better(cand, best) {
			best = cand
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: no certificate file (*.pem, *.crt) in %s is valid now and matches a key listed in %s (%d listed, %d opened)", ErrNoIdentity, p.dir, IdentityFile, len(uris), p.openCount(uris))
	}
	return best, nil
}

func (p *IdentityProvider) openCount(uris []string) int {
	n := 0
	for _, u := range uris {
		if p.signers[u] != nil {
			n++
		}
	}
	return n
}

func (p *IdentityProvider) matchKey(uris []string, pub crypto.PublicKey) (string, Signer) {
	for _, u := range uris {
		if s := p.signers[u]; s != nil && publicKeysEqual(s.Public(), pub) {
			return u, s
		}
	}
	return "", nil
}

func better(a, b *Identity) bool {
	ac, bc := a.Certificate, b.Certificate
	if !ac.NotBefore.Equal(bc.NotBefore) {
		return ac.NotBefore.After(bc.NotBefore)
	}
	if !ac.NotAfter.Equal(bc.NotAfter) {
		return ac.NotAfter.After(bc.NotAfter)
	}
	return a.File > b.File
}

// Run watches the folder until ctx is done and reloads on changes (and
// every Recheck). Errors of a reload are logged; the old identity stays.
// It returns ctx's error, ErrClosed once the provider is closed, or an
// error if the folder cannot be watched. Watch the folder itself: files in
// it may be replaced in any way (atomic rename, symlink swap, editor).
func (p *IdentityProvider) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("identity folder %s: watching: %w", p.dir, err)
	}
	defer w.Close()
	if err := w.Add(p.dir); err != nil {
		return fmt.Errorf("identity folder %s: watching: %w", p.dir, err)
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	recheck := time.NewTicker(p.opts.Recheck)
	defer recheck.Stop()
	reload := func(why string) {
		if err := p.Reload(); err != nil {
			p.log.Warn("identity folder reload failed; keeping the current identity", "dir", p.dir, "trigger", why, "error", err.Error())
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("identity folder %s: watcher closed", p.dir)
			}
			p.log.Debug("identity folder event", "file", ev.Name, "op", ev.Op.String())
			debounce.Reset(p.opts.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("identity folder %s: watcher closed", p.dir)
			}
			p.log.Warn("identity folder watch error; rescanning", "dir", p.dir, "error", err.Error())
			debounce.Reset(p.opts.Debounce)
		case <-debounce.C:
			reload("file change")
		case <-recheck.C:
			reload("periodic")
		}
		if p.closed.Load() {
			return fmt.Errorf("identity folder %s: %w", p.dir, ErrClosed)
		}
	}
}

// Close closes every key the provider opened. Idempotent. Identities
// handed out before must not be used to sign after Close.
func (p *IdentityProvider) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
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

//go:build cgo

package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// sessionPool is a bounded set of logged-in sessions of one token. A
// session is used by one goroutine at a time; get blocks while max sessions
// are busy. Sessions the module invalidated are dropped (and their slot in
// the bound freed) so that the next get opens a fresh one.
type sessionPool struct {
	tok  *token
	idle chan pkcs11.SessionHandle // idle sessions, cap max
	sem  chan struct{}             // one element per open session, cap max
}

func newSessionPool(t *token, max int) *sessionPool {
	return &sessionPool{tok: t, idle: make(chan pkcs11.SessionHandle, max), sem: make(chan struct{}, max)}
}

func (p *sessionPool) get() (pkcs11.SessionHandle, error) {
	select {
	case sh := <-p.idle:
		return sh, nil
	default:
	}
	select {
	case sh := <-p.idle:
		return sh, nil
	case p.sem <- struct{}{}:
		sh, err := p.tok.openSession(false)
		if err != nil {
			<-p.sem
			return 0, err
		}
		return sh, nil
	}
}

func (p *sessionPool) put(sh pkcs11.SessionHandle) { p.idle <- sh }

// drop closes a broken session and frees its place.
func (p *sessionPool) drop(sh pkcs11.SessionHandle) {
	_ = p.tok.mod.ctx.CloseSession(sh)
	<-p.sem
}

// closeIdle closes every idle session. Called with no session in use.
func (p *sessionPool) closeIdle() {
	for {
		select {
		case sh := <-p.idle:
			p.drop(sh)
		default:
			return
		}
	}
}

// p11Signer is an ECDSA P-256 private key in a PKCS#11 token.
type p11Signer struct {
	uri  *URI
	tok  *token
	pool *sessionPool
	pub  *ecdsa.PublicKey

	// mu: Sign holds it shared, Close exclusively, so Close waits for
	// signatures in flight and Sign after Close fails cleanly.
	mu     sync.RWMutex
	closed bool

	keyMu sync.Mutex
	key   pkcs11.ObjectHandle

	// reopenedAt is when Sign last re-initialised the module to find a
	// token that had gone (guarded by mu held exclusively).
	reopenedAt time.Time
}

// reopenEvery bounds how often Sign re-initialises the module while the
// token stays gone: signatures fail fast in between.
var reopenEvery = time.Second

var _ Signer = (*p11Signer)(nil)

// OpenSigner opens the ECDSA P-256 private key named by keyURI (token= and
// object= and/or id=; module-path= unless opts.ModulePath; pin-source=).
// The returned Signer signs through a bounded session pool and must be
// closed.
func OpenSigner(keyURI string, opts *Options) (Signer, error) {
	return openP11Signer(keyURI, opts)
}

func openP11Signer(keyURI string, opts *Options) (*p11Signer, error) {
	u, err := ParseURI(keyURI)
	if err != nil {
		return nil, err
	}
	if u.Object == "" && u.ID == nil {
		return nil, fmt.Errorf("%w: %s: name the key with object=LABEL and/or id=...", ErrBadURI, u.Redacted())
	}
	if u.Type != "" && u.Type != "private" {
		return nil, fmt.Errorf("%w: %s: type=%s, a signer needs a private key (type=private or no type)", ErrBadURI, u.Redacted(), u.Type)
	}
	t, err := openToken(u, opts)
	if err != nil {
		return nil, err
	}
	s := &p11Signer{uri: u, tok: t, pool: newSessionPool(t, opts.poolSize())}
	sh, err := s.pool.get()
	if err != nil {
		t.close()
		return nil, err
	}
	key, pub, err := findKeyPair(t, sh, u)
	if err != nil {
		s.pool.drop(sh)
		t.close()
		return nil, err
	}
	s.pool.put(sh)
	s.key, s.pub = key, pub
	return s, nil
}

// findKeyPair finds the private key of u and its public key.
func findKeyPair(t *token, sh pkcs11.SessionHandle, u *URI) (pkcs11.ObjectHandle, *ecdsa.PublicKey, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}
	if u.Object != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, u.Object))
	}
	if u.ID != nil {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, u.ID))
	}
	hs, err := t.findObjects(sh, tmpl, 2)
	if err != nil {
		return 0, nil, fmt.Errorf("token %q in %s: finding key %s: %w", t.label, t.mod.path, keyName(u), err)
	}
	switch len(hs) {
	case 0:
		return 0, nil, fmt.Errorf("%w: no private key %s on token %q in %s (is the PIN right, so private objects are visible?): list keys with 'memberd hsm list' or create one with 'memberd hsm keygen'", ErrKeyNotFound, keyName(u), t.label, t.mod.path)
	case 2:
		return 0, nil, fmt.Errorf("%w: several private keys match %s on token %q: add id= to the key URI", ErrAmbiguousKey, keyName(u), t.label)
	}
	priv := hs[0]
	attrs, err := t.mod.ctx.GetAttributeValue(sh, priv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
	})
	if err != nil {
		return 0, nil, fmt.Errorf("token %q: reading key %s: %w", t.label, keyName(u), err)
	}
	if kt := attrUint(attrs[0].Value); kt != pkcs11.CKK_EC {
		return 0, nil, fmt.Errorf("%w: key %s on token %q is %s, memberd needs ECDSA P-256 (generate one with 'memberd hsm keygen')", ErrWrongKeyType, keyName(u), t.label, keyTypeName(kt))
	}
	id, label := attrs[1].Value, attrs[2].Value
	pub, err := publicKeyFor(t, sh, priv, id, label)
	if err != nil {
		return 0, nil, fmt.Errorf("key %s on token %q: %w", keyName(u), t.label, err)
	}
	return priv, pub, nil
}

// publicKeyFor reads the EC public key matching a private key: from the
// public key object with the same CKA_ID (or label when the ID is empty).
func publicKeyFor(t *token, sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, id, label []byte) (*ecdsa.PublicKey, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}
	if len(id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	} else {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	hs, err := t.findObjects(sh, tmpl, 2)
	if err != nil {
		return nil, err
	}
	if len(hs) != 1 {
		// Some modules keep CKA_EC_POINT on the private key.
		attrs, err := t.mod.ctx.GetAttributeValue(sh, priv, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err == nil && len(attrs[1].Value) > 0 {
			return parseECPoint(attrs[0].Value, attrs[1].Value)
		}
		return nil, fmt.Errorf("%w: found %d public key objects with the private key's CKA_ID, need exactly 1 to read the public key", ErrKeyNotFound, len(hs))
	}
	attrs, err := t.mod.ctx.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("%w: reading CKA_EC_PARAMS/CKA_EC_POINT: %v", ErrWrongKeyType, err)
	}
	return parseECPoint(attrs[0].Value, attrs[1].Value)
}

func keyName(u *URI) string {
	switch {
	case u.Object != "" && u.ID != nil:
		return fmt.Sprintf("object=%q id=%x", u.Object, u.ID)
	case u.Object != "":
		return fmt.Sprintf("object=%q", u.Object)
	}
	return fmt.Sprintf("id=%x", u.ID)
}

func keyTypeName(kt uint) string {
	switch kt {
	case pkcs11.CKK_RSA:
		return "an RSA key"
	case pkcs11.CKK_EC:
		return "an EC key"
	case pkcs11.CKK_AES:
		return "an AES key"
	}
	return fmt.Sprintf("key type 0x%x", kt)
}

func (s *p11Signer) Public() crypto.PublicKey { return s.pub }

// ecdsaMech is CKM_ECDSA (raw hash in, r||s out); read-only, shared.
var ecdsaMech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}

// maxSignAttempts bounds retries after a lost session.
const maxSignAttempts = 3

// Sign signs digest with CKM_ECDSA and returns an ASN.1 DER signature with
// low S. rand is ignored (the HSM has its own). Sessions that the module
// reports closed or invalid are dropped and re-opened with a new login.
//
// A token that went away (SoftHSM2's token folder removed or unreadable, a
// USB HSM unplugged) is not seen again by an initialised module, even once
// it is back: then Sign re-initialises the module (at most every
// reopenEvery, and only when this signer is its only user in the process),
// finds the token and the same key again, and signs.
func (s *p11Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if err := checkDigest(digest, opts); err != nil {
		return nil, err
	}
	sig, err := s.sign(digest)
	if err == nil || !(errors.Is(err, ErrKeyNotFound) || errors.Is(err, ErrTokenNotFound) || tokenLost(err) ||
		isRV(err, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED)) {
		return sig, err
	}
	if rerr := s.reopen(); rerr != nil {
		if errors.Is(rerr, errReopenSkipped) {
			return nil, err
		}
		return nil, fmt.Errorf("%w (reopening the module: %w)", err, rerr)
	}
	return s.sign(digest)
}

// errReopenSkipped: reopen did nothing (too soon, or the module is shared).
var errReopenSkipped = errors.New("module not re-initialised")

// reopen re-initialises the module and finds the token and the key again.
// It waits for signatures in flight (mu held exclusively).
func (s *p11Signer) reopen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("HSM key %s: %w", s.uri.Redacted(), ErrClosed)
	}
	now := time.Now()
	if !s.reopenedAt.IsZero() && now.Sub(s.reopenedAt) < reopenEvery {
		return errReopenSkipped
	}
	s.reopenedAt = now
	s.pool.closeIdle() // every session is idle: mu is held exclusively
	if err := s.tok.mod.reinitialize(); err != nil {
		return err
	}
	s.tok.anchored = false // C_Finalize closed it
	if _, err := s.tok.findSlot(); err != nil {
		return err
	}
	if s.tok.pin != "" {
		sh, err := s.tok.openSession(false)
		if err != nil {
			return err
		}
		s.tok.anchor, s.tok.anchored = sh, true
	}
	sh, err := s.pool.get()
	if err != nil {
		return err
	}
	key, pub, err := findKeyPair(s.tok, sh, s.uri)
	if err != nil {
		s.pool.drop(sh)
		return err
	}
	s.pool.put(sh)
	if !pub.Equal(s.pub) {
		return fmt.Errorf("%w: key %s on token %q was replaced by another key: reopen it (restart or rotate the identity)", ErrKeyNotFound, keyName(s.uri), s.tok.label)
	}
	s.keyMu.Lock()
	s.key = key
	s.keyMu.Unlock()
	s.tok.log.Info("HSM token found again after the module was re-initialised", "token", s.tok.label, "module", s.tok.mod.path)
	return nil
}

func (s *p11Signer) sign(digest []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("HSM key %s: %w", s.uri.Redacted(), ErrClosed)
	}
	var lastErr error
	for attempt := 0; attempt < maxSignAttempts; attempt++ {
		sh, err := s.pool.get()
		if err != nil {
			return nil, fmt.Errorf("%w: key %s on token %q: %w", ErrSign, keyName(s.uri), s.tok.label, err)
		}
		raw, err := s.signOnce(sh, digest)
		if err == nil {
			s.pool.put(sh)
			return rawToLowSDER(raw)
		}
		lastErr = err
		switch rv := rvOf(err); {
		case sessionLost(err):
			// What closed this session (C_CloseAllSessions, token removed,
			// module restarted) most likely closed the idle ones too: drop
			// them all so that the retry opens a fresh, logged-in session.
			s.pool.drop(sh)
			s.pool.closeIdle()
			if tokenLost(err) {
				_, _ = s.tok.findSlot()
			}
			s.tok.log.Warn("HSM session lost; reopening", "token", s.tok.label, "module", s.tok.mod.path, "error", err.Error())
		case rv == pkcs11.CKR_USER_NOT_LOGGED_IN:
			s.tok.log.Warn("HSM session not logged in; logging in again", "token", s.tok.label)
			if lerr := s.tok.login(sh); lerr != nil {
				s.pool.drop(sh)
				return nil, lerr
			}
			s.pool.put(sh)
		case rv == pkcs11.CKR_KEY_HANDLE_INVALID || rv == pkcs11.CKR_OBJECT_HANDLE_INVALID:
			key, pub, ferr := findKeyPair(s.tok, sh, s.uri)
			s.pool.put(sh)
			if ferr != nil {
				return nil, ferr
			}
			if !pub.Equal(s.pub) {
				return nil, fmt.Errorf("%w: key %s on token %q was replaced by another key: reopen it (restart or rotate the identity)", ErrKeyNotFound, keyName(s.uri), s.tok.label)
			}
			s.keyMu.Lock()
			s.key = key
			s.keyMu.Unlock()
		default:
			s.pool.put(sh)
			return nil, fmt.Errorf("%w: key %s on token %q in %s: %w", ErrSign, keyName(s.uri), s.tok.label, s.tok.mod.path, err)
		}
	}
	return nil, fmt.Errorf("%w: key %s on token %q in %s: gave up after %d attempts: %w", ErrSign, keyName(s.uri), s.tok.label, s.tok.mod.path, maxSignAttempts, lastErr)
}

func (s *p11Signer) signOnce(sh pkcs11.SessionHandle, digest []byte) ([]byte, error) {
	s.keyMu.Lock()
	key := s.key
	s.keyMu.Unlock()
	if err := s.tok.mod.ctx.SignInit(sh, ecdsaMech, key); err != nil {
		return nil, err
	}
	return s.tok.mod.ctx.Sign(sh, digest)
}

// Close closes the signer's sessions and releases the module (finalised
// when this was its last user). Idempotent; waits for signatures in flight.
func (s *p11Signer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.pool.closeIdle()
	s.tok.close()
	return nil
}

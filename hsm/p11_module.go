//go:build cgo

package hsm

// PKCS#11 module and token handling.
//
// One module context per module path per process, reference counted: dlopen
// of the same library returns the same handle and C_Initialize/C_Finalize act
// on the whole library, so two independent contexts would finalise each
// other. The last user to release a module calls C_Finalize and unloads it;
// the next user initialises it afresh (SoftHSM2 reads SOFTHSM2_CONF at
// C_Initialize, which is how tests get a fresh token directory each).
//
// Several processes on one token. SoftHSM2 2.6.1 (Debian 12's) rewrites the
// token's token.object on every successful C_Login (Token::loginUser ->
// setTokenFlags) and releases its fcntl lock before the stdio buffer is
// flushed (fixed upstream after 2.6.1, commit 90aa89c "Flush files before
// unlocking", in no release yet). A process whose C_Initialize reads the
// file in that window loads the token broken: it is missing from the slot
// list ("token not found ... tokens present: <the others>") or has no user
// PIN (CKR_USER_PIN_NOT_INITIALIZED). Measured: 8 parallel 'memberd hsm
// selftest' on one token, 18 of 40 failed. Such a process cannot recover
// without initialising the module again, so openToken retries the whole
// open (module, slot, login) with backoff while the error is one of those,
// and keeps one logged-in session per token (anchor) so that later sessions
// do not log in (and rewrite the token) again.

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

type module struct {
	path string
	ctx  *pkcs11.Ctx
	refs int      // guarded by modulesMu
	env  []string // the environment (NAME=value) in force at C_Initialize
	// initEnv are the ModuleEnv pairs set around C_Initialize (again in
	// reinitialize).
	initEnv []string
	// finalized: reinitialize finalised the module and C_Initialize has
	// failed since (guarded by modulesMu).
	finalized bool
	// finalize is false when someone else in the process had already
	// initialised the library: then we must not finalise it.
	finalize bool

	// Login state is per application and token: once logged in, C_Login
	// answers CKR_USER_ALREADY_LOGGED_IN whatever the PIN. To still refuse
	// a wrong PIN, remember a hash of the PIN that logged each token in.
	loginMu sync.Mutex
	logins  map[string][32]byte // token label -> sha256(PIN)
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

// acquireModule loads and initialises the module at path, with env (NAME=value)
// set in the environment during C_Initialize, or returns the context already
// loaded, with one more reference.
func acquireModule(path string, env []string) (*module, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no module path: add module-path=/path/to/module.so to the key URI (SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so)", ErrModuleNotFound)
	}
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m := modules[path]; m != nil {
		for _, kv := range env {
			if !slices.Contains(m.env, kv) {
				return nil, fmt.Errorf("%w: %s is already initialised in this process without %s: one process uses one configuration of a module (close its other keys first)", ErrModuleNotFound, path, kv)
			}
		}
		m.refs++
		return m, nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: %s: %v: install the HSM vendor's PKCS#11 library or fix module-path in the key URI", ErrModuleNotFound, path, err)
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s could not be loaded as a PKCS#11 library (dlopen or C_GetFunctionList failed): check it is the right library for this architecture", ErrModuleNotFound, path)
	}
	m := &module{path: path, ctx: ctx, refs: 1, finalize: true, logins: map[string][32]byte{}, initEnv: env}
	restore := setEnv(env)
	m.env = os.Environ()
	err := ctx.Initialize()
	restore()
	if err != nil {
		if !isRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			ctx.Destroy()
			return nil, fmt.Errorf("%w: %s: C_Initialize: %v: check the module's configuration (for SoftHSM2: SOFTHSM2_CONF and its tokendir)", ErrModuleNotFound, path, err)
		}
		m.finalize = false
	}
	modules[path] = m
	return m, nil
}

// setEnv sets the NAME=value pairs in env and returns what puts the
// previous values back.
func setEnv(env []string) (restore func()) {
	type prev struct {
		name, value string
		had         bool
	}
	var old []prev
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		was, had := os.LookupEnv(k)
		old = append(old, prev{k, was, had})
		os.Setenv(k, v)
	}
	return func() {
		for i := len(old) - 1; i >= 0; i-- {
			if old[i].had {
				os.Setenv(old[i].name, old[i].value)
			} else {
				os.Unsetenv(old[i].name)
			}
		}
	}
}

// reinitialize finalises and initialises the module again (with its
// environment), so that it reads its tokens afresh; every session and login
// of the process ends. It does so only when the caller holds the only
// reference and this process initialised the module (else
// errReopenSkipped). When C_Initialize fails (SoftHSM2 refuses while its
// token folder is missing) the module stays finalised and the next call
// tries C_Initialize again.
func (m *module) reinitialize() error {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m.refs != 1 || !m.finalize {
		return errReopenSkipped
	}
	if !m.finalized {
		_ = m.ctx.Finalize()
		m.finalized = true
	}
	m.loginMu.Lock()
	clear(m.logins)
	m.loginMu.Unlock()
	restore := setEnv(m.initEnv)
	err := m.ctx.Initialize()
	restore()
	if err != nil && !isRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return fmt.Errorf("%s: C_Initialize: %w", m.path, err)
	}
	m.finalized = false
	return nil
}

// release drops one reference; the last one finalises and unloads.
func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules, m.path)
	if m.finalize && !m.finalized {
		_ = m.ctx.Finalize()
	}
	m.ctx.Destroy()
}

func isRV(err error, rv uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == rv
}

// rvOf returns the CKR_ code of err, or 0.
func rvOf(err error) uint {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}

// sessionLost reports errors after which a session is useless and must be
// replaced (and the token possibly looked up again).
func sessionLost(err error) bool {
	switch rvOf(err) {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_DEVICE_ERROR:
		return true
	}
	return false
}

// tokenLost reports errors after which the slot of the token must be found
// again by label.
func tokenLost(err error) bool {
	switch rvOf(err) {
	case pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_SLOT_ID_INVALID:
		return true
	}
	return false
}

// token is one token of a module, found by label, with the PIN to log in.
type token struct {
	mod   *module
	label string
	pin   string
	log   *slog.Logger

	// anchor is a session kept open, logged in, from open to close
	// (immutable; valid if anchored): login state lasts while one session of
	// the application is open, so pool sessions find it and do not log in.
	anchor   pkcs11.SessionHandle
	anchored bool

	mu   sync.Mutex
	slot uint // guarded by mu
}

// Retries of openToken on a transiently broken token view (see the file
// comment): tokenOpenAttempts tries, waiting tokenRetryBase, then twice as
// long each time (plus up to as much jitter): at most ~1.3 s in all.
const tokenOpenAttempts = 7

var tokenRetryBase = 10 * time.Millisecond

// transientTokenError reports errors that SoftHSM2 gives a process that
// initialised the module while another process was rewriting the token.
func transientTokenError(err error) bool {
	if errors.Is(err, ErrTokenNotFound) {
		return true
	}
	switch rvOf(err) {
	case pkcs11.CKR_USER_PIN_NOT_INITIALIZED, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_TOKEN_NOT_RECOGNIZED:
		return true
	}
	return false
}

// openToken finds the token labelled u.Token in the URI's module.
func openToken(u *URI, opts *Options) (*token, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if u.Token == "" {
		return nil, fmt.Errorf("%w: %s: no token=LABEL; memberd finds tokens by label, never by slot number", ErrBadURI, u.Redacted())
	}
	pin, err := readPIN(u, opts)
	if err != nil {
		return nil, err
	}
	path := u.ModulePath
	if path == "" && opts != nil {
		path = opts.ModulePath
	}
	log := opts.logger()
	for attempt := 1; ; attempt++ {
		t, err := tryOpenToken(u.Token, path, pin, opts.moduleEnv(), log)
		if err == nil || attempt == tokenOpenAttempts || !transientTokenError(err) {
			return t, err
		}
		d := tokenRetryBase << (attempt - 1)
		d += rand.N(d)
		log.Debug("HSM token not usable yet (another process writing it?); opening the module again",
			"token", u.Token, "module", path, "attempt", attempt, "retry_in", d, "err", err)
		time.Sleep(d)
	}
}

// tryOpenToken loads the module, finds the token and (with a PIN) opens
// its anchor session, logged in. On error it releases the module, which
// finalises it if this was its only user, so the next try reads the token
// afresh.
func tryOpenToken(label, path, pin string, env []string, log *slog.Logger) (*token, error) {
	m, err := acquireModule(path, env)
	if err != nil {
		return nil, err
	}
	t := &token{mod: m, label: label, pin: pin, log: log}
	if _, err := t.findSlot(); err != nil {
		m.release()
		return nil, err
	}
	if pin != "" {
		sh, err := t.openSession(false)
		if err != nil {
			m.release()
			return nil, err
		}
		t.anchor, t.anchored = sh, true
	}
	return t, nil
}

func (t *token) close() {
	if t.anchored {
		_ = t.mod.ctx.CloseSession(t.anchor) // may be gone already (token removed, sessions closed)
	}
	t.mod.release()
}

// findSlot looks the token up by label among the slots with a token present.
func (t *token) findSlot() (uint, error) {
	slots, err := t.mod.ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: C_GetSlotList: %v", ErrTokenNotFound, t.mod.path, err)
	}
	var labels []string
	for _, s := range slots {
		ti, err := t.mod.ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		l := strings.TrimRight(ti.Label, " \x00")
		if l == t.label {
			t.mu.Lock()
			t.slot = s
			t.mu.Unlock()
			return s, nil
		}
		labels = append(labels, fmt.Sprintf("%q", l))
	}
	have := "no tokens present"
	if len(labels) > 0 {
		have = "tokens present: " + strings.Join(labels, ", ")
	}
	return 0, fmt.Errorf("%w: token %q not found in module %s (%s): check the token label in the key URI, that the HSM is connected, and (SoftHSM2) SOFTHSM2_CONF", ErrTokenNotFound, t.label, t.mod.path, have)
}

func (t *token) currentSlot() uint {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.slot
}

// openSession opens a session on the token (read-write if rw: key
// generation; signing needs only read-only) and logs in. Login state
// belongs to the application, so CKR_USER_ALREADY_LOGGED_IN is fine.
func (t *token) openSession(rw bool) (pkcs11.SessionHandle, error) {
	flags := uint(pkcs11.CKF_SERIAL_SESSION)
	if rw {
		flags |= pkcs11.CKF_RW_SESSION
	}
	slot := t.currentSlot()
	sh, err := t.mod.ctx.OpenSession(slot, flags)
	if err != nil && tokenLost(err) {
		if slot, err = t.findSlot(); err != nil {
			return 0, err
		}
		sh, err = t.mod.ctx.OpenSession(slot, flags)
	}
	if err != nil {
		return 0, fmt.Errorf("token %q in %s: C_OpenSession: %w", t.label, t.mod.path, err)
	}
	if err := t.login(sh); err != nil {
		_ = t.mod.ctx.CloseSession(sh)
		return 0, err
	}
	return sh, nil
}

func (t *token) login(sh pkcs11.SessionHandle) error {
	if t.pin == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(t.pin))
	t.mod.loginMu.Lock() // serialises logins so the recorded PIN is the one that logged in
	defer t.mod.loginMu.Unlock()
	err := t.mod.ctx.Login(sh, pkcs11.CKU_USER, t.pin)
	switch rvOf(err) {
	case 0:
		t.mod.logins[t.label] = sum
		return nil
	case pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		if prev, ok := t.mod.logins[t.label]; ok && prev != sum {
			return fmt.Errorf("%w: token %q in %s is logged in by this process with another PIN: check the pin-source file", ErrWrongPIN, t.label, t.mod.path)
		}
		return nil
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_INVALID:
		return fmt.Errorf("%w: token %q in %s refused the PIN (%v): check the pin-source file; repeated failures lock the token", ErrWrongPIN, t.label, t.mod.path, err)
	case pkcs11.CKR_PIN_LOCKED:
		return fmt.Errorf("%w: token %q in %s: the PIN is locked (%v): unlock it with the security officer PIN", ErrWrongPIN, t.label, t.mod.path, err)
	}
	return fmt.Errorf("token %q in %s: C_Login: %w", t.label, t.mod.path, err)
}

// attrUint decodes a CK_ULONG attribute value.
func attrUint(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0)
}

// findObjects returns up to max handles matching tmpl.
func (t *token) findObjects(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := t.mod.ctx.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for len(all) < max {
		hs, _, err := t.mod.ctx.FindObjects(sh, max-len(all))
		if err != nil {
			_ = t.mod.ctx.FindObjectsFinal(sh)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if err := t.mod.ctx.FindObjectsFinal(sh); err != nil {
		return nil, err
	}
	return all, nil
}

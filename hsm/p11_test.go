//go:build cgo

package hsm_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testenv"
)

func mustSignVerify(t *testing.T, s crypto.Signer, msg string) {
	t.Helper()
	if err := signVerify(s, msg); err != nil {
		t.Fatal(err)
	}
}

// signVerify signs sha256(msg) and checks the signature (safe in goroutines).
func signVerify(s crypto.Signer, msg string) error {
	d := sha256.Sum256([]byte(msg))
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		return fmt.Errorf("sign %q: %w", msg, err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) || !hsm.IsLowS(sig) {
		return fmt.Errorf("signature of %q does not verify or is high-S", msg)
	}
	return nil
}

func TestConcurrentSigners64(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	ki := tok.GenerateKey(t, "tls")
	s, err := hsm.OpenSigner(ki.URI, &hsm.Options{PoolSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pub := s.Public().(*ecdsa.PublicKey)
	per := 20
	if testing.Short() {
		per = 5
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64*per)
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				d := sha256.Sum256([]byte(fmt.Sprintf("%d/%d", g, i)))
				sig, err := s.Sign(nil, d[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(pub, d[:], sig) || !hsm.IsLowS(sig) {
					errs <- fmt.Errorf("goroutine %d sig %d bad", g, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestOpenErrors(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	tok.GenerateKey(t, "tls")
	wrongPIN := filepath.Join(t.TempDir(), "wrong.pin")
	if err := os.WriteFile(wrongPIN, []byte("9999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := hsm.URI{Token: tok.Label, Object: "tls", ModulePath: tok.Module, PINSource: "file:" + tok.PINFile}
	with := func(f func(u *hsm.URI)) string { u := base; f(&u); return u.String() }
	tests := []struct {
		name string
		uri  string
		opts *hsm.Options
		want error
		says []string // words the message must contain
	}{
		{"missing module", with(func(u *hsm.URI) { u.ModulePath = "/nonexistent/libpkcs11.so" }), nil, hsm.ErrModuleNotFound, []string{"/nonexistent/libpkcs11.so", "module-path"}},
		{"not a module", with(func(u *hsm.URI) { u.ModulePath = tok.PINFile }), nil, hsm.ErrModuleNotFound, []string{tok.PINFile}},
		{"no module path", with(func(u *hsm.URI) { u.ModulePath = "" }), nil, hsm.ErrModuleNotFound, []string{"module-path"}},
		{"missing token", with(func(u *hsm.URI) { u.Token = "member-z" }), nil, hsm.ErrTokenNotFound, []string{`"member-z"`, tok.Module, `"member-a"`}},
		{"wrong PIN", with(func(u *hsm.URI) { u.PINSource = "file:" + wrongPIN }), nil, hsm.ErrWrongPIN, []string{`"member-a"`, "pin-source"}},
		{"missing PIN file", with(func(u *hsm.URI) { u.PINSource = "file:/nonexistent.pin" }), nil, hsm.ErrPINSource, []string{"/nonexistent.pin"}},
		{"missing key", with(func(u *hsm.URI) { u.Object = "nope" }), nil, hsm.ErrKeyNotFound, []string{`"nope"`, "memberd hsm keygen"}},
		{"pin-value refused", with(func(u *hsm.URI) { u.PINSource = ""; u.PINValue = hsmtest.UserPIN }), nil, hsm.ErrPINValueRefused, []string{"pin-source"}},
		{"no object", with(func(u *hsm.URI) { u.Object = "" }), nil, hsm.ErrBadURI, []string{"object="}},
		{"no token", with(func(u *hsm.URI) { u.Token = "" }), nil, hsm.ErrBadURI, []string{"token="}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := hsm.OpenSigner(tc.uri, tc.opts)
			if err == nil {
				s.Close()
				t.Fatalf("OpenSigner(%s) succeeded", tc.uri)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			for _, w := range tc.says {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), hsmtest.UserPIN) {
				t.Errorf("error leaks the PIN: %v", err)
			}
		})
	}
	// A wrong PIN is refused even while the token is logged in (login
	// state is per process, C_Login then says "already logged in").
	open := tok.OpenKey(t, "tls", nil)
	mustSignVerify(t, open, "logged in")
	if s, err := hsm.OpenSigner(with(func(u *hsm.URI) { u.PINSource = "file:" + wrongPIN }), nil); !errors.Is(err, hsm.ErrWrongPIN) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("wrong PIN while logged in: %v, want ErrWrongPIN", err)
	}
	// pin-value works with the dev flag.
	s, err := hsm.OpenSigner(with(func(u *hsm.URI) { u.PINSource = ""; u.PINValue = hsmtest.UserPIN }), &hsm.Options{AllowPINValue: true})
	if err != nil {
		t.Fatalf("pin-value with AllowPINValue: %v", err)
	}
	defer s.Close()
	mustSignVerify(t, s, "pin-value")
}

// pkcs11Tool runs pkcs11-tool against the test token.
func pkcs11Tool(t *testing.T, tok *hsmtest.Token, args ...string) string {
	t.Helper()
	tool := testenv.Command(t, "pkcs11-tool", "opensc")
	all := append([]string{"--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", hsmtest.UserPIN}, args...)
	cmd := exec.Command(tool, all...)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestKeyFromPkcs11Tool(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	pkcs11Tool(t, tok, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "vendor", "--id", "a1b2")
	// By label.
	s := tok.OpenKey(t, "vendor", nil)
	mustSignVerify(t, s, "vendor key")
	// By id only.
	u := hsm.URI{Token: tok.Label, ID: []byte{0xa1, 0xb2}, ModulePath: tok.Module, PINSource: "file:" + tok.PINFile}
	s2, err := hsm.OpenSigner(u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if !s2.Public().(*ecdsa.PublicKey).Equal(s.Public()) {
		t.Fatal("same key by id has another public key")
	}
	keys, err := hsm.ListKeys(tok.URI(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Label != "vendor" || !bytes.Equal(keys[0].ID, []byte{0xa1, 0xb2}) || keys[0].Type != "EC P-256" || !keys[0].HasPrivate || !keys[0].HasPublic {
		t.Fatalf("ListKeys = %+v", keys)
	}
}

func TestWrongKeyType(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	pkcs11Tool(t, tok, "--keypairgen", "--key-type", "rsa:2048", "--label", "rsa", "--id", "01")
	pkcs11Tool(t, tok, "--keypairgen", "--key-type", "EC:secp384r1", "--label", "p384", "--id", "02")
	for _, label := range []string{"rsa", "p384"} {
		s, err := hsm.OpenSigner(tok.KeyURI(label), nil)
		if err == nil {
			s.Close()
			t.Fatalf("%s: opened", label)
		}
		if !errors.Is(err, hsm.ErrWrongKeyType) {
			t.Fatalf("%s: got %v, want ErrWrongKeyType", label, err)
		}
	}
}

func TestKeygenAttributesAndDuplicates(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	ki := tok.GenerateKey(t, "tls")
	if len(ki.ID) == 0 || !strings.Contains(ki.URI, "id=") {
		t.Fatalf("keygen gave no id: %+v", ki)
	}
	if _, err := hsm.GenerateKey(tok.KeyURI("tls"), nil); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("second keygen with same label: %v, want ErrKeyExists", err)
	}
	// Attributes as seen by vendor tooling.
	out := pkcs11Tool(t, tok, "--list-objects", "--type", "privkey")
	for _, want := range []string{"tls", "sensitive", "never extractable"} {
		if !strings.Contains(out, want) {
			t.Errorf("pkcs11-tool --list-objects lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "  extractable") {
		t.Errorf("key is extractable:\n%s", out)
	}
}

// TestSessionKilledUnderneath closes every session of the token through a
// second handle on the module; the next Sign must reopen and log in again.
func TestSessionKilledUnderneath(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	tok.GenerateKey(t, "tls")
	var logs syncBuffer
	s := tok.OpenKey(t, "tls", &hsm.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// Fill the pool with several idle sessions: all of them get killed.
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				if err := signVerify(s, fmt.Sprintf("before %d/%d", g, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := hsm.OpenSessions(s); n < 2 {
		t.Logf("only %d session(s) open before the kill (machine busy?)", n)
	}

	ctx := pkcs11.New(tok.Module)
	if ctx == nil {
		t.Fatal("second handle: pkcs11.New failed")
	}
	defer ctx.Destroy() // no Finalize: the module is shared with the signer
	if err := ctx.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	killed := false
	for _, sl := range slots {
		ti, err := ctx.GetTokenInfo(sl)
		if err == nil && ti.Label == tok.Label {
			if err := ctx.CloseAllSessions(sl); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	if !killed {
		t.Fatal("token not found through the second handle")
	}
	for i := 0; i < 10; i++ { // serial: each must succeed although idle sessions are stale
		mustSignVerify(t, s, fmt.Sprintf("after %d", i))
	}
	if !strings.Contains(logs.String(), "HSM session lost; reopening") {
		t.Fatalf("the killed session was not detected and replaced; logs:\n%s", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestPoolBoundedAndScales: the pool opens a session per concurrent
// holder up to PoolSize, never more, and callers beyond the bound wait.
func TestPoolBoundedAndScales(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	tok.GenerateKey(t, "tls")
	const size = 3
	s := tok.OpenKey(t, "tls", &hsm.Options{PoolSize: size})
	release, err := hsm.HoldSessions(s, size)
	if err != nil {
		t.Fatal(err)
	}
	if n := hsm.OpenSessions(s); n != size {
		t.Fatalf("%d concurrent holders opened %d sessions", size, n)
	}
	done := make(chan error, 1)
	go func() { done <- signVerify(s, "waits for a session") }()
	select {
	case err := <-done:
		t.Fatalf("Sign did not wait for a free session (bound %d): %v", size, err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Many callers: never more than the bound.
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := 0
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if err := signVerify(s, fmt.Sprintf("%d/%d", g, i)); err != nil {
					t.Error(err)
					return
				}
				n := hsm.OpenSessions(s)
				mu.Lock()
				peak = max(peak, n)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if peak > size {
		t.Fatalf("pool opened %d sessions, bound is %d", peak, size)
	}
	if _, err := hsm.OpenSigner(tok.KeyURI("tls"), &hsm.Options{PoolSize: -1}); err == nil {
		t.Fatal("negative PoolSize accepted")
	}
}

func TestTwoTokensInOneTest(t *testing.T) {
	a := hsmtest.NewToken(t, "member-a")
	sa := a.NewKey(t, "tls")
	b := hsmtest.NewToken(t, "member-b") // created while the module is in use
	sb := b.NewKey(t, "tls")
	mustSignVerify(t, sa, "a")
	mustSignVerify(t, sb, "b")
	if sa.Public().(*ecdsa.PublicKey).Equal(sb.Public()) {
		t.Fatal("two tokens gave the same key")
	}
}

func TestOpenKeySoftRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.pem")
	var warn bytes.Buffer
	so := &hsm.SoftOptions{AllowInsecure: true, Warnings: &warn}
	s, err := hsm.GenerateSoftKey(path, so)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := hsm.OpenKey("file:"+path, nil); !errors.Is(err, hsm.ErrInsecureRefused) {
		t.Fatalf("OpenKey(file:) without dev flag: %v", err)
	}
	if _, err := hsm.OpenSoftSigner(path, &hsm.SoftOptions{}); !errors.Is(err, hsm.ErrInsecureRefused) {
		t.Fatalf("OpenSoftSigner without AllowInsecure: %v", err)
	}
	s, err = hsm.OpenKey("file:"+path, &hsm.Options{AllowSoftKeys: true, SoftWarnings: &warn})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustSignVerify(t, s, "one")
	mustSignVerify(t, s, "two")
	if n := strings.Count(warn.String(), "INSECURE"); n != 2 {
		t.Fatalf("want one warning per use (2), got %d:\n%s", n, warn.String())
	}
	if _, err := hsm.GenerateSoftKey(path, so); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("GenerateSoftKey over an existing file: %v", err)
	}
	if _, err := hsm.OpenKey("bogus:x", nil); !errors.Is(err, hsm.ErrBadURI) {
		t.Fatalf("OpenKey(bogus): %v", err)
	}
}

func TestSelfTest(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	s := tok.NewKey(t, "tls")
	if err := hsm.SelfTest(t.Context(), s); err != nil {
		t.Fatal(err)
	}
}

// TestTokenGoneAndBack: SoftHSM2's token folder is moved away while a
// signer is open (the token is unavailable), then put back. Signing fails
// with an error naming the token while it is gone, the process does not
// crash, and signing works again once it is back (SoftHSM2 does not see a
// token again without a new C_Initialize: Sign re-initialises the module).
func TestTokenGoneAndBack(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	tok.GenerateKey(t, "tls")
	var logs syncBuffer
	s := tok.OpenKey(t, "tls", &hsm.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	mustSignVerify(t, s, "before")
	tokens := filepath.Join(tok.Dir, "tokens")
	if err := os.Rename(tokens, tokens+".gone"); err != nil {
		t.Fatal(err)
	}
	back := false
	defer func() {
		if !back {
			os.Rename(tokens+".gone", tokens)
		}
	}()
	for i := range 3 {
		err := signVerify(s, fmt.Sprintf("gone %d", i))
		if err == nil {
			t.Fatalf("signing %d succeeded with the token folder gone", i)
		}
		if !strings.Contains(err.Error(), `"member-a"`) {
			t.Errorf("the error does not name the token: %v", err)
		}
	}
	if err := os.Rename(tokens+".gone", tokens); err != nil {
		t.Fatal(err)
	}
	back = true
	start := time.Now()
	for signVerify(s, "back") != nil {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("signing still fails 10 s after the token folder is back: %v", signVerify(s, "back"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("signing again %v after the token folder is back", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(logs.String(), "HSM token found again") {
		t.Errorf("no log line saying the token is back:\n%s", logs.String())
	}
}

// Package hsmtest makes real SoftHSM2 tokens for tests: each test gets its
// own token directory and configuration (SOFTHSM2_CONF is set for the test
// with t.Setenv), so tests share no HSM state. Tokens are initialised like
// `softhsm2-util --init-token --free`, through the PKCS#11 API in-process.
//
//	tok := hsmtest.NewToken(t, "member-a")
//	signer := tok.NewKey(t, "tls")      // P-256 key generated in the token
//	uri := tok.KeyURI("tls")            // pkcs11:token=member-a;object=tls?module-path=...&pin-source=file:...
//
// Several tokens made by one test (and its subtests) share that test's
// directory (the PKCS#11 module is loaded once per process and reads
// SOFTHSM2_CONF only when it is initialised). Everything opened through a Token is closed at test cleanup;
// tests that open signers themselves must close them (t.Cleanup) so that the
// module is finalised before the next test points it at a new directory.
//
// Because SOFTHSM2_CONF is process-wide, tests using hsmtest must not run in
// parallel (t.Parallel) with each other.
package hsmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/testenv"
)

// Default PINs of test tokens.
const (
	UserPIN = "1234"
	SOPIN   = "5678"
)

// Token is a SoftHSM2 token created for one test.
type Token struct {
	Label   string // token label (CKA label)
	Module  string // path of libsofthsm2.so
	PINFile string // file holding UserPIN, mode 0600
	Conf    string // the softhsm2.conf of the test
	Dir     string // the test's token directory root
}

type testDir struct{ dir, conf, pinFile string }

var (
	mu   sync.Mutex
	dirs = map[testing.TB]*testDir{}
)

// NewToken creates a fresh SoftHSM2 token labelled label, initialised with
// UserPIN (SO PIN SOPIN), and points SOFTHSM2_CONF at it for the rest of the test. It skips
// the test (fails under CI) when SoftHSM2 is not installed.
func NewToken(tb testing.TB, label string) *Token {
	tb.Helper()
	if !haveCgo {
		testenv.Missing(tb, "cgo (PKCS#11 through github.com/miekg/pkcs11)", "apt-get install gcc and build with CGO_ENABLED=1")
	}
	module, _ := testenv.SoftHSMModule(tb)
	d, first := testDirFor(tb)
	if err := initToken(module, label, first); err != nil {
		tb.Fatalf("hsmtest: creating token %q in %s: %v", label, d.conf, err)
	}
	return &Token{Label: label, Module: module, PINFile: d.pinFile, Conf: d.conf, Dir: d.dir}
}

func testDirFor(tb testing.TB) (d *testDir, first bool) {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if d := dirs[tb]; d != nil {
		return d, false
	}
	// A subtest shares the directory of its (still running) parent test,
	// whose signers may hold the module initialised on it.
	if conf := os.Getenv("SOFTHSM2_CONF"); conf != "" {
		for _, live := range dirs {
			if live.conf == conf {
				dirs[tb] = live
				tb.Cleanup(func() {
					mu.Lock()
					delete(dirs, tb)
					mu.Unlock()
				})
				return live, false
			}
		}
	}
	root := tb.TempDir()
	d = &testDir{dir: root, conf: filepath.Join(root, "softhsm2.conf"), pinFile: filepath.Join(root, "user.pin")}
	tokens := filepath.Join(root, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		tb.Fatalf("hsmtest: %v", err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(d.conf, []byte(conf), 0o600); err != nil {
		tb.Fatalf("hsmtest: %v", err)
	}
	if err := os.WriteFile(d.pinFile, []byte(UserPIN+"\n"), 0o600); err != nil {
		tb.Fatalf("hsmtest: %v", err)
	}
	tb.Setenv("SOFTHSM2_CONF", d.conf)
	dirs[tb] = d
	tb.Cleanup(func() {
		mu.Lock()
		delete(dirs, tb)
		mu.Unlock()
	})
	return d, true
}

// URI returns the token's URI (no object): module path and PIN file included.
func (t *Token) URI() string {
	u := &hsm.URI{Token: t.Label, ModulePath: t.Module, PINSource: "file:" + t.PINFile}
	return u.String()
}

// KeyURI returns the URI of the key labelled object in this token, with
// module path and PIN file.
func (t *Token) KeyURI(object string) string {
	u := &hsm.URI{Token: t.Label, Object: object, ModulePath: t.Module, PINSource: "file:" + t.PINFile}
	return u.String()
}

// GenerateKey generates an ECDSA P-256 key labelled object with
// hsm.GenerateKey and returns its info (URI with id).
func (t *Token) GenerateKey(tb testing.TB, object string) *hsm.KeyInfo {
	tb.Helper()
	ki, err := hsm.GenerateKey(t.KeyURI(object), nil)
	if err != nil {
		tb.Fatalf("hsmtest: generating key %q in token %q: %v", object, t.Label, err)
	}
	return ki
}

// NewKey generates an ECDSA P-256 key labelled object in the token (through
// hsm.GenerateKey) and opens it. The signer is closed at test cleanup.
func (t *Token) NewKey(tb testing.TB, object string) hsm.Signer {
	tb.Helper()
	ki := t.GenerateKey(tb, object)
	s, err := hsm.OpenSigner(ki.URI, nil)
	if err != nil {
		tb.Fatalf("hsmtest: opening key %q in token %q: %v", object, t.Label, err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// OpenKey opens an existing key by label; closed at test cleanup.
func (t *Token) OpenKey(tb testing.TB, object string, opts *hsm.Options) hsm.Signer {
	tb.Helper()
	s, err := hsm.OpenSigner(t.KeyURI(object), opts)
	if err != nil {
		tb.Fatalf("hsmtest: opening key %q in token %q: %v", object, t.Label, err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

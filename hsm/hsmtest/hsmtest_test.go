package hsmtest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"os"
	"testing"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
)

func TestNewTokenAndKey(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	if os.Getenv("SOFTHSM2_CONF") != tok.Conf {
		t.Fatalf("SOFTHSM2_CONF = %q, want %q", os.Getenv("SOFTHSM2_CONF"), tok.Conf)
	}
	if fi, err := os.Stat(tok.PINFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("PIN file: %v, %v", fi, err)
	}
	u, err := hsm.ParseURI(tok.KeyURI("tls"))
	if err != nil || u.Token != "member-a" || u.Object != "tls" || u.ModulePath != tok.Module {
		t.Fatalf("KeyURI: %+v, %v", u, err)
	}
	s := tok.NewKey(t, "tls")
	d := sha256.Sum256([]byte("x"))
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("sign: %v", err)
	}
	// A second token in the same test shares the test's configuration.
	b := hsmtest.NewToken(t, "member-b")
	if b.Conf != tok.Conf {
		t.Fatal("tokens of one test should share the test's SoftHSM2 configuration")
	}
}

func TestSubtestSharesParentDir(t *testing.T) {
	a := hsmtest.NewToken(t, "parent")
	sa := a.NewKey(t, "k") // keeps the module initialised on the parent's dir
	t.Run("child", func(t *testing.T) {
		b := hsmtest.NewToken(t, "child")
		if b.Conf != a.Conf {
			t.Fatalf("subtest got its own configuration %s, parent has %s", b.Conf, a.Conf)
		}
		sb := b.NewKey(t, "k")
		if sb.Public().(*ecdsa.PublicKey).Equal(sa.Public()) {
			t.Fatal("same key in two tokens")
		}
	})
	t.Run("second child", func(t *testing.T) {
		c := hsmtest.NewToken(t, "child-2")
		c.NewKey(t, "k")
	})
}

func TestNextTestGetsFreshDir(t *testing.T) {
	tok := hsmtest.NewToken(t, "parent") // same label as the previous test: a fresh directory
	tok.NewKey(t, "k")
}

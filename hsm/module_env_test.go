//go:build cgo

package hsm_test

import (
	"os"
	"testing"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
)

// TestModuleEnvConfiguresModuleOnly: Options.ModuleEnv points SoftHSM2 at a
// token folder that the process environment does not name, and leaves the
// process environment as it was (memberd demo init relies on it).
func TestModuleEnvConfiguresModuleOnly(t *testing.T) {
	tok := hsmtest.NewToken(t, "modenv")
	elsewhere := t.TempDir() + "/absent.conf"
	t.Setenv("SOFTHSM2_CONF", elsewhere)

	if _, err := hsm.GenerateKey(tok.KeyURI("without"), nil); err == nil {
		t.Fatal("GenerateKey found the token without ModuleEnv: the test does not show what ModuleEnv does")
	}
	opts := &hsm.Options{ModuleEnv: []string{"SOFTHSM2_CONF=" + tok.Conf}}
	ki, err := hsm.GenerateKey(tok.KeyURI("with"), opts)
	if err != nil {
		t.Fatalf("GenerateKey with ModuleEnv: %v", err)
	}
	if got := os.Getenv("SOFTHSM2_CONF"); got != elsewhere {
		t.Fatalf("SOFTHSM2_CONF = %q after GenerateKey, want %q (unchanged)", got, elsewhere)
	}
	s, err := hsm.OpenKey(ki.URI, opts)
	if err != nil {
		t.Fatalf("OpenKey with ModuleEnv: %v", err)
	}
	defer s.Close()

	// While s holds the module, a request for another configuration of it
	// is refused instead of silently using the one loaded.
	other := &hsm.Options{ModuleEnv: []string{"SOFTHSM2_CONF=" + elsewhere}}
	if _, err := hsm.OpenKey(ki.URI, other); err == nil {
		t.Fatal("OpenKey with another SOFTHSM2_CONF while the module is loaded succeeded, want an error")
	}
	if err := (&hsm.Options{ModuleEnv: []string{"SOFTHSM2_CONF"}}).Validate(); err == nil {
		t.Fatal("Validate accepted a ModuleEnv entry without '='")
	}
}

package app

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestPolicyLog: the versions a watcher applied are listed from its state
// folder, with their votes, after a restart too, the one in force marked.
func TestPolicyLog(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	v2 := c.Next(t, g, func(d *policy.Document) { d.Ledger.BatchTimeout = "1s" }, "m1", "m2")
	v3 := c.Next(t, v2, func(d *policy.Document) { d.Description = "third" }, "m2", "m3")
	dir, state := t.TempDir(), t.TempDir()
	for i, p := range []*policy.Policy{g, v2, v3} {
		policyWriteFile(t, filepath.Join(dir, "v"+string(rune('1'+i))+".yaml"), p.Marshal())
	}
	for range 2 { // the second start finds the history as it was
		w, err := policy.NewWatcher(policy.Options{Dir: dir, StateDir: state, Genesis: g.Hash()})
		if err != nil || w.Current().Version() != 3 {
			t.Fatalf("watcher: %v", err)
		}
	}
	code, out, errb := run(t, "policy", "log", "--state", state)
	policyExpect(t, code, out+errb, ExitOK, "VERSION", "genesis", "ledger_changed", "m1/a1,m2/a1", "metadata_changed", "m2/a1,m3/a1", "3 *")
	t.Logf("memberd policy log:\n%s", out)
	if n := strings.Count(out, "\n"); n != 4 {
		t.Fatalf("%d lines, want a header and 3 versions:\n%s", n, out)
	}
	code, _, errb = run(t, "policy", "log")
	policyExpect(t, code, errb, ExitUsage, "--state")
}

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

// TestPolicyLogChannels: once a version lists several channels, each row
// says which channels the version lists (+ added, - dropped) and each
// CONFIG block which channel it is of; a single-channel history keeps
// the columns it had.
func TestPolicyLogChannels(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	v2 := c.Next(t, g, func(d *policy.Document) {
		d.Ledger.Channel = ""
		d.Ledger.Channels = []*policy.Channel{
			{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}},
			{Name: "beta", Consenters: []string{"m1", "m2"}, Members: []string{"m1", "m2"}},
		}
	}, "m1", "m2", "m3")
	v3 := c.Next(t, v2, func(d *policy.Document) {
		d.Ledger.Channels = append(d.Ledger.Channels, &policy.Channel{Name: "gamma", Consenters: []string{"m3"}})
	}, "m1", "m2", "m3")
	v4 := c.Next(t, v3, func(d *policy.Document) { d.Ledger.Channels = d.Ledger.Channels[1:] }, "m1", "m2", "m3")
	var hist []policy.Applied
	for _, p := range []*policy.Policy{g, v2, v3, v4} {
		hist = append(hist, policy.Applied{Policy: p})
	}
	blocks := map[policy.Hash][]configBlockRef{v3.Hash(): {{channel: "alpha", number: 4}, {channel: "beta", number: 2}}}
	var out strings.Builder
	printPolicyLog(&out, hist, v4, blocks)
	t.Logf("memberd policy log:\n%s", out.String())
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 5 || !strings.Contains(lines[0], "CHANNELS") {
		t.Fatalf("want a header with CHANNELS and 4 versions:\n%s", out.String())
	}
	for i, want := range [][]string{{" trade "}, {"+alpha,+beta,-trade"}, {"alpha,beta,+gamma", "alpha:4,beta:2"}, {"beta,gamma,-alpha"}} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("version %d: %q lacks %q", i+1, lines[i+1], w)
			}
		}
	}

	// Single channel: no CHANNELS column, the block number alone.
	out.Reset()
	printPolicyLog(&out, hist[:1], g, map[policy.Hash][]configBlockRef{g.Hash(): {{channel: "trade", number: 3}}})
	if strings.Contains(out.String(), "CHANNELS") || strings.Contains(out.String(), "trade:3") || !strings.Contains(out.String(), " 3\n") {
		t.Fatalf("single-channel log:\n%s", out.String())
	}
}

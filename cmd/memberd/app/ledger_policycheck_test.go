package app

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestLedgerPolicyCheck: no check without ledger.config_blocks; with it,
// a consenter's versions are held until the ledger runs, and a member that
// is no consenter of the version in force is not checked.
func TestLedgerPolicyCheck(t *testing.T) {
	var ref atomic.Pointer[ledgerRun]
	for name, cfg := range map[string]*runConfig{
		"no ledger":        {Member: "m1"},
		"no config blocks": {Member: "m1", Ledger: &runLedger{}},
	} {
		if ledgerPolicyCheck(cfg, &ref) != nil {
			t.Errorf("%s: a check, want none", name)
		}
	}
	check := ledgerPolicyCheck(&runConfig{Member: "m1", Ledger: &runLedger{ConfigBlocks: true}}, &ref)
	if check == nil {
		t.Fatal("no check with ledger.config_blocks")
	}
	c := policytest.New(t, 2)
	g := c.Genesis(t)
	v2 := c.Next(t, g, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 7 }, "m1", "m2")
	if err := check(g, v2); !errors.Is(err, policy.ErrHeld) {
		t.Fatalf("before the ledger runs: %v, want ErrHeld", err)
	}
	// A member that v2 adds starts with v1 in force: it is no consenter
	// of it, so v2 applies on the votes (else it could not start).
	newcomer := ledgerPolicyCheck(&runConfig{Member: "m9", Ledger: &runLedger{ConfigBlocks: true}}, &ref)
	if err := newcomer(g, v2); err != nil {
		t.Fatalf("a member not a consenter of the version in force: %v, want no check", err)
	}
}

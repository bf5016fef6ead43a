package app

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestLedgerPolicyCheck: no check without ledger.config_blocks; with it,
// versions are held until the ledger runs.
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
	if err := check(g, c.Next(t, g, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 7 }, "m1", "m2")); !errors.Is(err, policy.ErrHeld) {
		t.Fatalf("before the ledger runs: %v, want ErrHeld", err)
	}
}

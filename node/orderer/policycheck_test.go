package orderer

import (
	"errors"
	"testing"
	"time"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// TestCheckPolicyVersion: the channel half of accepting a policy version
// (policy.Options.Check): under-signed for the channel's mod_policies is
// refused with the reason, fully signed or changing nothing in the channel
// passes, and a version after one whose CONFIG block is not stored yet is
// held, then checked against the config that block put in force.
func TestCheckPolicyVersion(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) { c.ConfigBlocks = true })
	l := cl.leader(10 * time.Second)
	n := cl.node(l)
	v1 := cl.c.policy()
	v2 := cl.c.cons.Next(t, v1, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 3 })
	full := cl.withConfigSignatures(t, l, v2)
	under := v2.WithConfigSignature(full.ConfigSignatures()[0]) // one admin of three

	err := n.CheckPolicyVersion(v1, under)
	if !errors.Is(err, policy.ErrChannelConfig) || !errors.Is(err, channelconfig.ErrUnderSigned) {
		t.Fatalf("under-signed v2: %v, want ErrChannelConfig and ErrUnderSigned", err)
	}
	t.Logf("under-signed: %v", err)
	if err := n.CheckPolicyVersion(v1, v2); !errors.Is(err, channelconfig.ErrUnderSigned) {
		t.Fatalf("v2 without channel signatures: %v, want ErrUnderSigned", err)
	}
	if err := n.CheckPolicyVersion(v1, full); err != nil {
		t.Fatalf("v2 signed by every admin: %v", err)
	}
	same := cl.c.cons.Next(t, v1, func(d *policy.Document) {})
	if err := n.CheckPolicyVersion(v1, same); err != nil {
		t.Fatalf("a version that changes nothing in the channel: %v", err)
	}

	// v2 is applied (the watcher accepted it) but its CONFIG block is not
	// stored yet: v3 waits for it.
	v3 := cl.c.cons.Next(t, full, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 4 })
	if err := n.CheckPolicyVersion(full, v3); !errors.Is(err, policy.ErrHeld) {
		t.Fatalf("v3 before v2's CONFIG block: %v, want ErrHeld", err)
	}
	cl.c.cur.Store(full)
	cl.reconcileAll()
	cl.waitLastConfig(20 * time.Second)
	v3 = cl.withConfigSignatures(t, l, v3) // on the update from the config v2 put in force
	if err := n.CheckPolicyVersion(full, v3); err != nil {
		t.Fatalf("v3 after v2's CONFIG block: %v", err)
	}
}

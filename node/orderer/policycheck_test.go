package orderer

import (
	"errors"
	"sync/atomic"
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

// TestConfigBlockPolicyHistory: a node whose policy moved past the version
// a config block was derived from (as after a restart) checks and stores
// the block with the version its policy history holds, where without it
// it stops (TestConfigBlockUnverifiable).
func TestConfigBlockPolicyHistory(t *testing.T) {
	var v2p atomic.Pointer[policy.Policy]
	var asked atomic.Int32
	cl, skip := newSkippingCluster(t, func(h policy.Hash) *policy.Policy {
		asked.Add(1)
		if p := v2p.Load(); p != nil && p.Hash() == h {
			return p
		}
		return nil
	})
	v2 := cl.c.cons.Next(t, cl.c.policy(), func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 3 })
	v3 := cl.c.cons.Next(t, v2, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 4 })
	skip.Store(v3)
	signed := cl.withConfigSignatures(t, 1, v2)
	v2p.Store(signed)
	cl.c.cur.Store(signed)
	cl.reconcileAll()
	num := cl.waitLastConfig(15 * time.Second) // node 3 included
	if asked.Load() == 0 {
		t.Fatal("node 3 stored the config block without asking its policy history")
	}
	if got := cl.node(3).LastConfig(); got != num {
		t.Fatalf("node 3 last config %d, want %d", got, num)
	}
}

// newSkippingCluster starts 3 nodes with ConfigBlocks, node 3 a follower
// whose policy is *skip once set (a version past the cluster's), with
// history as its PolicyHistory.
func newSkippingCluster(t *testing.T, history func(policy.Hash) *policy.Policy) (*cluster, *atomic.Pointer[policy.Policy]) {
	var skip atomic.Pointer[policy.Policy]
	var clp atomic.Pointer[cluster] // set once newCluster returns (New reads the policy)
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) {
		c.ConfigBlocks = true
		if c.Raft.ID == 3 {
			c.Policy = func() *policy.Policy {
				if p := skip.Load(); p != nil {
					return p
				}
				if cl := clp.Load(); cl != nil {
					return cl.c.pol
				}
				return nil
			}
			c.PolicyHistory = history
		}
	})
	clp.Store(cl)
	if l := cl.leader(10 * time.Second); l == 3 {
		cl.stop(3)
		cl.leader(10 * time.Second)
		cl.start(3)
	}
	return cl, &skip
}

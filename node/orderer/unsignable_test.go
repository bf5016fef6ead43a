package orderer

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

// TestNewConsenterSignsNoBlockOfAnotherConfig: m4, whose org the channel
// config does not have (the genesis lists m1..m3 and no CONFIG block adds
// it here), is added as a consenter; it catches up (a raft snapshot and
// Deliver, or the log) and then applies the blocks ordered with it from
// the raft log. Every block it stores carries the signature of a consenter whose
// org is an orderer org, as a stock peer requires, none its own: it
// fetched the other consenters' copies. It orders with the others
// meanwhile.
func TestNewConsenterSignsNoBlockOfAnotherConfig(t *testing.T) {
	var fetched atomic.Int64
	cl := newCluster(t, 3, testBatch(), func(c *Config) {
		liveMembership(c)
		c.Fetcher = countingFetcher{c.Fetcher, &fetched}
		if c.Raft.ID == 4 && c.Raft.Peers != nil { // the new consenter: no addresses, Join
			c.Raft.Join, c.Raft.Peers = true, []raftlog.Peer{{ID: 4}}
		}
	})
	cl.leader(10 * time.Second)
	res := newLoadResult()
	cl.load(t, cl.c.identity(t, "m1", "before"), 30, 1, 100, res, nil)
	cl.addMember(t, "m4")
	tn4 := cl.addSlot()
	cl.setConsenters(t, "m1", "m2", "m3", "m4")
	all := []uint64{1, 2, 3, 4}
	cl.waitVoters(cl.leader(10*time.Second), all, 20*time.Second)
	cl.start(tn4.id)
	cl.waitVoters(4, all, 20*time.Second)
	res2 := newLoadResult()
	cl.load(t, cl.c.identity(t, "m2", "after"), 30, 1, 100, res2, nil)
	if len(res.success) != 30 || len(res2.success) != 30 {
		t.Fatalf("SUCCESS %d and %d of 30: %v %v", len(res.success), len(res2.success), res.other, res2.other)
	}
	h := cl.node(cl.leader(time.Second)).Height()
	cl.waitHeight(h, 20*time.Second)
	cl.checkIdentical()
	n4 := cl.node(4)
	for num := uint64(1); num < h; num++ {
		b, err := n4.store.Get(num)
		if err != nil {
			t.Fatal(err)
		}
		sds, err := block.Signatures(b)
		if err != nil {
			t.Fatalf("block %d: %v", num, err)
		}
		for _, sd := range sds {
			msp, cert, err := block.CreatorCertificate(sd.Identity)
			if err != nil {
				t.Fatal(err)
			}
			if msp == "m4MSP" {
				t.Fatalf("node 4 stores block %d signed by itself (%q), whose org is no orderer org of the channel config", num, cert.Subject)
			}
		}
	}
	if fetched.Load() == 0 {
		t.Fatal("node 4 fetched no block")
	}
	t.Logf("node 4 stores %d blocks, none signed by itself; %d fetched from the others (raft snapshot index %d)", h, fetched.Load(), n4.Raft().Status().SnapshotIndex)
}

// TestOtherSigner: a node whose org is no orderer org waits for another
// consenter's copy only while some other consenter of the policy belongs
// to an orderer org of the config; when none does (all genesis consenters
// replaced), no copy stock peers accept can exist, and it signs.
func TestOtherSigner(t *testing.T) {
	c := newConsortium(t, 3, block.CutterConfig{})
	ch, err := channelconfig.Parse(c.genesis)
	if err != nil {
		t.Fatal(err)
	}
	withM4 := c.cons.Next(t, c.pol, func(d *policy.Document) { d.Members = append(d.Members, c.cons.NewMember(t, "m4")) })
	c.cur.Store(withM4)
	m4 := c.nodeIdentity(t, "m4", "n4").Serialized()
	consenters := func(ids ...string) *policy.Policy {
		return c.cons.Next(t, withM4, func(d *policy.Document) {
			for _, m := range d.Members {
				m.Roles = slices.DeleteFunc(m.Roles, func(r policy.Role) bool { return r == policy.RoleConsenter })
				if slices.Contains(ids, m.ID) {
					m.Roles = append(m.Roles, policy.RoleConsenter)
				}
			}
			d.Ledger.Consenters = ids
		})
	}
	if got := otherSigner(ch, consenters("m1", "m2", "m3", "m4"), m4); got == "" {
		t.Fatal("m1..m3 are orderer orgs of the genesis config: want one of them")
	}
	if got := otherSigner(ch, consenters("m3", "m4"), m4); got != "m3" {
		t.Fatalf("otherSigner %q, want m3", got)
	}
	if got := otherSigner(ch, consenters("m4"), m4); got != "" {
		t.Fatalf("otherSigner %q with m4 the only consenter, want none", got)
	}
	if got := otherSigner(ch, nil, m4); got != "" {
		t.Fatalf("otherSigner %q without a policy, want none", got)
	}
}

package orderer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

// liveMembership: the test cluster's addresses n<k> for members m<k>, and
// raft ID k for an added m<k> (so that cl.nodes[k-1] is its node).
func liveMembership(c *Config) {
	c.Membership = &Membership{
		Addr:     func(m string) string { return "n" + m[1:] },
		ID:       func(m string) uint64 { var k uint64; fmt.Sscanf(m, "m%d", &k); return k },
		Interval: 100 * time.Millisecond,
	}
}

// addMember makes the cluster's policy the next version, with a new member
// id (role writer).
func (cl *cluster) addMember(t testing.TB, id string) {
	t.Helper()
	cl.c.cur.Store(cl.c.cons.Next(t, cl.c.policy(), func(d *policy.Document) {
		d.Members = append(d.Members, cl.c.cons.NewMember(t, id))
	}))
}

// setConsenters makes the cluster's policy the next version, with
// ledger.consenters = members, and nudges the running nodes.
func (cl *cluster) setConsenters(t testing.TB, members ...string) {
	t.Helper()
	cl.c.cur.Store(cl.nextConsenters(t, members...))
	for _, tn := range cl.nodes {
		if n := tn.np.Load(); n != nil {
			n.Reconcile()
		}
	}
}

// nextConsenters returns the next version of the cluster's policy, with
// ledger.consenters = members (the cluster's policy stays as it is).
func (cl *cluster) nextConsenters(t testing.TB, members ...string) *policy.Policy {
	t.Helper()
	return cl.c.cons.Next(t, cl.c.policy(), func(d *policy.Document) {
		for _, m := range d.Members {
			if slices.Contains(members, m.ID) {
				if !m.HasRole(policy.RoleConsenter) {
					m.Roles = append(m.Roles, policy.RoleConsenter)
				}
			} else {
				m.Roles = slices.DeleteFunc(m.Roles, func(r policy.Role) bool { return r == policy.RoleConsenter })
			}
		}
		d.Ledger.Consenters = members
	})
}

// waitVoters waits until node id's raft voters are want (sorted) with
// member names m<k>.
// consentersWithout returns members m1..mN and raft IDs 1..N but drop.
func consentersWithout(n, drop uint64) ([]string, []uint64) {
	var keep []string
	var ids []uint64
	for k := uint64(1); k <= n; k++ {
		if k != drop {
			keep = append(keep, fmt.Sprintf("m%d", k))
			ids = append(ids, k)
		}
	}
	return keep, ids
}

func (cl *cluster) waitVoters(id uint64, want []uint64, timeout time.Duration) {
	cl.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var got []raftlog.Peer
		if n := cl.node(id); n != nil {
			got = n.Raft().Members()
		}
		ok := len(got) == len(want)
		for i := range got {
			ok = ok && got[i].ID == want[i] && got[i].Name == fmt.Sprintf("m%d", want[i])
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			cl.t.Fatalf("node %d: voters %v, want %v", id, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConsentersLive: a policy change adds a 4th consenter while envelopes
// are submitted (it starts with only the genesis block and catches up
// through a snapshot and Deliver), then another removes the leader (it
// hands leadership over first and stops ordering); no SUCCESS-answered
// envelope is lost, the remaining nodes hold identical blocks, and after a
// restart of every node the membership is the same and they order again.
func TestConsentersLive(t *testing.T) {
	total := 3000
	if testing.Short() {
		total = 1200
	}
	cl := newCluster(t, 3, testBatch(), func(c *Config) {
		liveMembership(c)
		c.Raft.SnapshotEvery = 20
		c.Raft.CatchUpEntries = 5
		if c.Raft.ID == 4 && c.Raft.Peers != nil { // the new consenter: no addresses, Join
			c.Raft.Join, c.Raft.Peers = true, []raftlog.Peer{{ID: 4}}
		}
	})
	cl.leader(10 * time.Second)
	cl.addMember(t, "m4")
	tn4 := cl.addSlot() // before the load, which reads cl.nodes
	client := cl.c.identity(t, "m1", "live-client")
	res := newLoadResult()
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		cl.load(t, client, total, 2, 200, res, nil)
	}()
	waitSuccess := func(n int) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			res.mu.Lock()
			got := len(res.success)
			res.mu.Unlock()
			if got >= n || time.Now().After(deadline) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Add m4 under load.
	waitSuccess(total / 5)
	cl.setConsenters(t, "m1", "m2", "m3", "m4")
	l := cl.leader(10 * time.Second)
	cl.waitVoters(l, []uint64{1, 2, 3, 4}, 20*time.Second)
	cl.start(tn4.id)
	cl.waitVoters(4, []uint64{1, 2, 3, 4}, 20*time.Second)
	t.Logf("m4 added; leader %d", l)

	// Remove the leader's member under load.
	waitSuccess(total / 2)
	old := cl.leader(10 * time.Second)
	keep, keepIDs := consentersWithout(4, old)
	cl.setConsenters(t, keep...)
	// The others drop it from raft; the old leader stops ordering (raft
	// may never tell it that its removal committed: droppedByPolicy).
	cl.waitVoters(keepIDs[0], keepIDs, 30*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for err := cl.node(old).Healthy(); !errors.Is(err, ErrRemoved); err = cl.node(old).Healthy() {
		if time.Now().After(deadline) {
			t.Fatalf("old leader %d: Healthy %v, want ErrRemoved (%+v)", old, err, cl.node(old).Raft().Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cl.stop(old)
	t.Logf("m%d (the leader) removed; new leader %d", old, cl.leader(10*time.Second))

	<-loaded
	t.Logf("%d SUCCESS of %d, other %v", len(res.success), total, res.other)
	if len(res.success) < total/2 {
		t.Fatalf("only %d SUCCESS of %d", len(res.success), total)
	}
	cl.waitHeight(cl.node(cl.leader(10*time.Second)).Height(), 20*time.Second)
	txids := cl.checkIdentical()
	for id := range res.success {
		if txids[id] == 0 {
			t.Fatalf("SUCCESS-answered tx %s is missing", id)
		}
	}

	// Every remaining node restarts from its disk: same membership, and it
	// orders again.
	for _, k := range keepIDs {
		cl.stop(k)
	}
	for _, k := range keepIDs {
		cl.start(k)
	}
	for _, k := range keepIDs {
		cl.waitVoters(k, keepIDs, 20*time.Second)
	}
	res2 := newLoadResult()
	cl.load(t, cl.c.identity(t, "m2", "after-restart"), 100, 1, 100, res2, nil)
	if len(res2.success) != 100 {
		t.Fatalf("after restart: %d SUCCESS of 100: %v", len(res2.success), res2.other)
	}
	cl.waitHeight(cl.node(cl.leader(time.Second)).Height(), 10*time.Second)
	cl.checkIdentical()
}

// TestConsentersRemoveFollower: removing a follower under load leaves two
// consenters that keep ordering (with a warning: no failure tolerated);
// the removed node stops ordering and says why.
func TestConsentersRemoveFollower(t *testing.T) {
	cl := newCluster(t, 3, testBatch(), liveMembership)
	l := cl.leader(10 * time.Second)
	f := l%3 + 1
	res := newLoadResult()
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		cl.load(t, cl.c.identity(t, "m1", "rm-client"), 1200, 2, 200, res, nil)
	}()
	keep, keepIDs := consentersWithout(3, f)
	cl.setConsenters(t, keep...)
	cl.waitVoters(l, keepIDs, 20*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for !errors.Is(cl.node(f).Healthy(), ErrRemoved) {
		if time.Now().After(deadline) {
			t.Fatalf("follower %d: Healthy %v", f, cl.node(f).Healthy())
		}
		time.Sleep(20 * time.Millisecond)
	}
	<-loaded
	if len(res.success) != 1200 {
		t.Fatalf("%d SUCCESS of 1200 (the leader stayed): %v", len(res.success), res.other)
	}
	cl.stop(f)
	cl.waitHeight(cl.node(l).Height(), 10*time.Second)
	txids := cl.checkIdentical()
	for id := range res.success {
		if txids[id] != 1 {
			t.Fatalf("tx %s in the chain %d times", id, txids[id])
		}
	}
}

// TestRemovedNodeSettles is issue #11 item 4: a follower cut off while the
// policy drops it never learns from raft that its removal committed (the
// others stop sending to it), so raft alone would keep it running a
// pre-vote election every election timeout for ever, and redialing peers
// that reject it. Once the path is back it must answer ErrRemoved, retire
// (no campaign, no message, a dial at most every 10 s) and stay so.
func TestRemovedNodeSettles(t *testing.T) {
	cl := newCluster(t, 3, testBatch(), liveMembership)
	l := cl.leader(10 * time.Second)
	f := l%3 + 1
	fname := cl.nodes[f-1].name
	cl.net.Partition(fname)
	keep, keepIDs := consentersWithout(3, f)
	cl.setConsenters(t, keep...)
	cl.waitVoters(l, keepIDs, 20*time.Second)
	cl.net.Heal(fname)
	deadline := time.Now().Add(10 * time.Second)
	for !errors.Is(cl.node(f).Healthy(), ErrRemoved) || !cl.node(f).Raft().Status().Retired {
		if time.Now().After(deadline) {
			t.Fatalf("follower %d: Healthy %v, raft %+v", f, cl.node(f).Healthy(), cl.node(f).Raft().Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cl.node(f).Raft().Removed() {
		t.Log("raft told the follower of its removal after all (the partition did not hold it back)")
	}
	messages := func() uint64 {
		st := cl.node(f).Raft().Status().Transport
		n := st.Sent
		for _, d := range st.Dropped {
			n += d
		}
		return n
	}
	time.Sleep(time.Second) // a campaign under way when it retired ends
	m0, d0 := messages(), cl.net.Dials(fname)
	const watch = 3 * time.Second // 15 election timeouts of the test cluster
	time.Sleep(watch)
	m1, d1 := messages(), cl.net.Dials(fname)
	st := cl.node(f).Raft().Status()
	t.Logf("removed follower %d over %v: %d raft messages, %d dials; state %s, leader %d", f, watch, m1-m0, d1-d0, st.State, st.Leader)
	if m1-m0 > 2 {
		t.Errorf("removed follower sent or dropped %d raft messages in %v: still campaigning", m1-m0, watch)
	}
	if d1-d0 > 2 { // 2 peers, one redial each per 10 s at most
		t.Errorf("removed follower dialed %d times in %v", d1-d0, watch)
	}
	if err := cl.node(f).Healthy(); !errors.Is(err, ErrRemoved) || !strings.Contains(err.Error(), "removed from ledger.consenters") {
		t.Errorf("Healthy %v, want ErrRemoved naming ledger.consenters", err)
	}
	// The others order on; the removed node does not disturb them.
	if lead := cl.leader(10 * time.Second); lead != l {
		t.Errorf("leader changed from %d to %d", l, lead)
	}
}

// TestConsentersLaggingLeader: policy skew between members is normal (each
// member's admins copy a new version into their own policy folder at their
// own time). Version 2 removes a follower's member; the leader applies it.
// Then leadership moves to the third node, whose folder still has version
// 1, which lists the removed member: it must hold, not add it back (issue
// #11's simulation, -sim.policyskew seed 4), and it follows once its
// folder has version 2.
func TestConsentersLaggingLeader(t *testing.T) {
	var own [3]atomic.Pointer[policy.Policy] // each node's policy folder; nil: the genesis version
	cl := newCluster(t, 3, testBatch(), func(c *Config) {
		liveMembership(c)
		id, base := c.Raft.ID, c.Policy
		c.Policy = func() *policy.Policy {
			if p := own[id-1].Load(); p != nil {
				return p
			}
			return base()
		}
	})
	lead := cl.leader(10 * time.Second)
	drop := lead%3 + 1
	lag := drop%3 + 1
	keep, keepIDs := consentersWithout(3, drop)
	v2 := cl.nextConsenters(t, keep...)
	own[lead-1].Store(v2)
	own[drop-1].Store(v2)
	cl.node(lead).Reconcile()
	cl.waitVoters(lead, keepIDs, 20*time.Second)
	cl.waitVoters(lag, keepIDs, 20*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.node(lead).Raft().TransferLeadership(ctx, lag); err != nil {
		t.Fatalf("transfer leadership %d -> %d: %v", lead, lag, err)
	}
	ln := cl.node(lag)
	for !ln.IsLeader() || ln.raft.Progress() == nil {
		if ctx.Err() != nil {
			t.Fatalf("node %d does not lead", lag)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// One planning step of the lagging leader, as its driver makes every
	// Membership.Interval: it holds and says why.
	m := *ln.cfg.Membership
	m.ChangeTimeout = 5 * time.Second
	m.Consenters = func() []string { return ln.cfg.Policy().Ledger().Consenters } // what the driver plans from
	again, msg := ln.reconcileStep(ctx, m, nil)
	if again || !strings.Contains(msg, "policy version 1, older than version 2") {
		t.Errorf("lagging leader's step: again %v, %q; want a hold naming versions 1 and 2", again, msg)
	}
	// Its driver keeps running meanwhile (every 100ms): the removed member
	// stays out while it leads.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, p := range ln.Raft().Members() {
			if p.ID == drop {
				t.Fatalf("lagging leader %d (policy version 1) added back %s, which version 2 removed: voters %v",
					lag, p.Name, ln.Raft().Members())
			}
		}
	}
	if !ln.IsLeader() {
		t.Fatalf("node %d lost leadership during the check; the test saw no lagging leader", lag)
	}

	// Its folder gets version 2: nothing left to do; the cluster orders on.
	own[lag-1].Store(v2)
	ln.Reconcile()
	if _, msg := ln.reconcileStep(ctx, m, nil); msg != "" {
		t.Errorf("step with version 2: %q", msg)
	}
	res := newLoadResult()
	cl.load(t, cl.c.identity(t, "m1", "skew-client"), 50, 1, 100, res, nil)
	if len(res.success) != 50 {
		t.Fatalf("%d SUCCESS of 50 after the hold: %v", len(res.success), res.other)
	}
	cl.waitVoters(lag, keepIDs, time.Second)
	if v := ln.Raft().MembershipVersion(); v != v2.Version() {
		t.Fatalf("membership version on node %d: %d, want %d (the log records the policy version of each change)", lag, v, v2.Version())
	}
}

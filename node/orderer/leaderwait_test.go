package orderer

import (
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
)

// TestSubmitWithoutLeaderWaitsForElection: an envelope that reaches a node
// while it knows no raft leader (here: just started, before the first
// election; after a leader's death it is the election) is held until a
// leader is elected and then ordered, and answered SUCCESS, instead of
// SERVICE_UNAVAILABLE "no raft leader known" at once, which sent every
// client into its own resubmission backoff after each leader change.
func TestSubmitWithoutLeaderWaitsForElection(t *testing.T) {
	// 20 ms ticks × 50: the first election comes 1-2 s after the start.
	cl := newForwardingCluster(t, 3, testBatch(), func(c *Config) { c.Raft.ElectionTicks = 50 })
	if l := cl.node(1).Raft().Leader(); l != 0 {
		t.Fatalf("node 1 already follows leader %d: the test needs a node without one", l)
	}
	envs, _ := envelopes(t, cl.c.identity(t, "m1", "client"), 1, 100)
	start := time.Now()
	st, info := broadcastOne(t, cl.nodes[0].client, envs[0])
	if st != common.Status_SUCCESS {
		t.Fatalf("answer %s %q after %v, want SUCCESS once a leader is elected", st, info, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("SUCCESS %v after the submission (leader %d)", time.Since(start).Round(time.Millisecond), cl.node(1).Raft().Leader())
}

// TestNoLeaderRefusedAfterBoundedWait: a node cut off from the others (no
// leader, and none to come) holds a submission at most
// leaderWaitElections election timeouts after it lost its leader, and
// refuses the next ones at once, so its clients can go elsewhere.
func TestNoLeaderRefusedAfterBoundedWait(t *testing.T) {
	// 20 ms ticks × 25: a 500 ms election timeout, a 1.5 s wait.
	cl := newCluster(t, 3, testBatch(), func(c *Config) { c.Raft.ElectionTicks = 25 })
	l := cl.leader(20 * time.Second)
	f := l%3 + 1
	for _, tn := range cl.nodes {
		if tn.id != f {
			cl.stop(tn.id)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for cl.node(f).Raft().Leader() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node %d still follows leader %d 10 s after the others stopped", f, cl.node(f).Raft().Leader())
		}
		time.Sleep(5 * time.Millisecond)
	}
	lost := time.Now()
	wait := leaderWaitElections * cl.node(f).Raft().ElectionTimeout()
	envs, _ := envelopes(t, cl.c.identity(t, "m1", "client"), 2, 100)
	st, info := broadcastOne(t, cl.nodes[f-1].client, envs[0])
	first := time.Since(lost)
	if st != common.Status_SERVICE_UNAVAILABLE || !strings.Contains(info, "no raft leader known") {
		t.Fatalf("first answer %s %q, want SERVICE_UNAVAILABLE: no raft leader known", st, info)
	}
	if first > wait+3*time.Second {
		t.Fatalf("first refusal %v after the leader was lost, want about %v", first.Round(time.Millisecond), wait)
	}
	start := time.Now()
	st, info = broadcastOne(t, cl.nodes[f-1].client, envs[1])
	if st != common.Status_SERVICE_UNAVAILABLE {
		t.Fatalf("second answer %s %q, want SERVICE_UNAVAILABLE", st, info)
	}
	if d := time.Since(start); d > wait/2 {
		t.Fatalf("second refusal took %v: held again although the wait (%v after the leader was lost) was over", d.Round(time.Millisecond), wait)
	}
	t.Logf("refused %v after the leader was lost, then at once (%v)", first.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

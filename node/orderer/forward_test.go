package orderer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
)

// blackhole is a Forwarder to a leader that never answers, like one whose
// tunnel endpoint vanished: the connection neither answers nor fails.
type blackhole struct{ forwarded chan struct{} }

func (b *blackhole) Forward(ctx context.Context, _ uint64, _ []byte) (func(context.Context) error, error) {
	b.forwarded <- struct{}{}
	return func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}, nil
}

// TestForwardedSubmitFailsOnLeaderChange: a follower that forwarded an
// envelope to a leader that then loses leadership answers its client
// SERVICE_UNAVAILABLE ("resubmit") as soon as it stops following that
// leader (leader unknown, or another one elected), not after SubmitTimeout.
func TestForwardedSubmitFailsOnLeaderChange(t *testing.T) {
	bh := &blackhole{forwarded: make(chan struct{}, 1)}
	cl := newCluster(t, 3, testBatch(), func(c *Config) {
		c.Forwarder = bh
		c.SubmitTimeout = 20 * time.Second
	})
	l := cl.leader(10 * time.Second)
	f := l%3 + 1
	envs, _ := envelopes(t, cl.c.identity(t, "m1", "client"), 1, 100)
	type answer struct {
		st   common.Status
		info string
		at   time.Time
	}
	got := make(chan answer, 1)
	go func() {
		st, info := broadcastOne(t, cl.nodes[f-1].client, envs[0])
		got <- answer{st, info, time.Now()}
	}()
	select {
	case <-bh.forwarded:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not forward")
	}
	cut := time.Now()
	cl.net.Partition(cl.nodes[l-1].name)
	defer cl.net.Heal(cl.nodes[l-1].name)
	var a answer
	select {
	case a = <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("no answer within 15s of the leader's partition (SubmitTimeout is 20s)")
	}
	if a.st != common.Status_SERVICE_UNAVAILABLE || !strings.Contains(a.info, "resubmit") {
		t.Fatalf("answer %s %q, want SERVICE_UNAVAILABLE asking to resubmit", a.st, a.info)
	}
	if nl := cl.node(f).Raft().Leader(); nl == l {
		t.Fatalf("answered while the follower still follows leader %d", l)
	}
	t.Logf("answered %s %v after the leader was cut off: %s", a.st, a.at.Sub(cut).Round(time.Millisecond), a.info)
}

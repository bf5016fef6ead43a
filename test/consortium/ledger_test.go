package consortium_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/demo"
)

// TestLedgerOverTunnel: 2 relays, 3 members (SoftHSM2 identities), each
// appliance running its ledger node with raft over the tunnel through the
// relays. N envelopes (200; 10 under -short) submitted to one member's
// gRPC endpoint are ordered, and every member serves the same verified
// blocks. Then one member is stopped, more envelopes are ordered by the
// other two (a quorum), and the restarted member catches up to the same
// blocks.
func TestLedgerOverTunnel(t *testing.T) {
	L := initConsortium(t, 3, 2)
	var forwarded atomic.Int64
	d := start(t, L, &demo.RunOptions{ForwardHook: func(_, _, _ string, _ []byte) { forwarded.Add(1) }})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n := 200
	if testing.Short() {
		n = 10
	}
	before := forwarded.Load()
	t0 := time.Now()
	h, err := d.CheckLedger(ctx, L.Members[1], n)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d envelopes through %s: height %d, identical verified blocks on %d members in %v; relays forwarded %d packets",
		n, L.Members[1], h, len(L.Members), time.Since(t0).Round(time.Millisecond), forwarded.Load()-before)
	if forwarded.Load() == before {
		t.Fatal("the relays forwarded nothing: raft did not cross the tunnel")
	}

	// A member down: the other two still order; back up, it catches up.
	down := L.Members[2]
	if err := d.StopMember(down); err != nil {
		t.Fatal(err)
	}
	// Until the others notice (election timeout, about 1s), a submission
	// may answer SERVICE_UNAVAILABLE (if down led): resubmit, as a client
	// must.
	for tries := 0; ; tries++ {
		_, err := d.LedgerSubmit(ctx, L.Members[0], 5)
		if err == nil {
			t.Logf("with %s down: 5 envelopes ordered after %d refused attempts", down, tries)
			break
		}
		if tries >= 50 || !strings.Contains(err.Error(), "SERVICE_UNAVAILABLE") {
			t.Fatalf("with %s down: %v", down, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := d.StartMember(ctx, down); err != nil {
		t.Fatal(err)
	}
	h2, err := d.CheckLedger(ctx, L.Members[0], 1)
	if err != nil {
		t.Fatalf("after %s restarted: %v", down, err)
	}
	if h2 <= h {
		t.Fatalf("height %d after restart, was %d", h2, h)
	}
	t.Logf("%s restarted and caught up: height %d on every member", down, h2)
}

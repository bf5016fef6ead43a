package orderer

import (
	"context"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
)

// TestRestartRefusesStoredTxIDs: after a restart the duplicate set is
// filled from the stored blocks (loadRecent, which reads only the tx ids
// of the newest blocks): an envelope already in the chain is refused, the
// newest and the oldest alike, and a new one is ordered.
func TestRestartRefusesStoredTxIDs(t *testing.T) {
	cl := newCluster(t, 1, testBatch(), nil)
	cl.leader(10 * time.Second)
	envs, ids := envelopes(t, cl.c.identity(t, "m1", "client"), 301, 200)
	res := newLoadResult()
	if n, err := broadcast(context.Background(), cl.nodes[0].client, envs[:300], ids[:300], res); err != nil || n != 300 || len(res.success) != 300 {
		t.Fatalf("answered %d, %d SUCCESS of 300: %v %v", n, len(res.success), err, res.other)
	}
	h := cl.node(1).Height()
	cl.stop(1)
	cl.start(1)
	cl.leader(10 * time.Second)
	if got := cl.node(1).Height(); got != h {
		t.Fatalf("height %d after restart, want %d", got, h)
	}
	for _, i := range []int{0, 150, 299} {
		if st, _ := broadcastOne(t, cl.nodes[0].client, envs[i]); st != common.Status_BAD_REQUEST {
			t.Fatalf("envelope %d, in the chain before the restart: %s, want BAD_REQUEST", i, st)
		}
	}
	if st, info := broadcastOne(t, cl.nodes[0].client, envs[300]); st != common.Status_SUCCESS {
		t.Fatalf("new envelope after restart: %s %s", st, info)
	}
}

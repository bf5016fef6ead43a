package orderer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/blockstore"
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

// TestRestartRefusesDamagedRecentBlock: a block damaged in the middle of
// the chain, outside the tail that the store's Open checks, but inside the
// blocks loadRecent reads for the duplicate set, stops the start with an
// error naming the block and the way out. Before, loadRecent stopped
// silently at it: the set missed every id older than it, and an envelope
// already in the chain was ordered a second time.
func TestRestartRefusesDamagedRecentBlock(t *testing.T) {
	batch := block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 100 * time.Millisecond}
	cl := newCluster(t, 1, batch, nil)
	cl.leader(10 * time.Second)
	envs, ids := envelopes(t, cl.c.identity(t, "m1", "client"), 121, 200)
	res := newLoadResult()
	if n, err := broadcast(context.Background(), cl.nodes[0].client, envs[:120], ids[:120], res); err != nil || n != 120 || len(res.success) != 120 {
		t.Fatalf("answered %d, %d SUCCESS of 120: %v %v", n, len(res.success), err, res.other)
	}
	h := cl.node(1).Height()
	if h < 100 {
		t.Fatalf("height %d: want one envelope per block", h)
	}
	cl.stop(1)

	// Damage block h-90, outside the 64 blocks Open checks.
	dir := cl.nodes[0].dir + "/blocks"
	s, err := blockstore.Open(dir, blockstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	victim := h - 90
	raw, err := s.GetRaw(victim)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	path := dir + "/blocks.dat"
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(file, raw)
	if at < 0 {
		t.Fatal("block not found")
	}
	file[at+len(raw)/2] ^= 0xff
	if err := os.WriteFile(path, file, 0o640); err != nil {
		t.Fatal(err)
	}

	err = cl.tryStart(1)
	if err == nil {
		cl.leader(10 * time.Second)
		// envs[0] is in block 1, far older than the damaged block.
		st, info := broadcastOne(t, cl.nodes[0].client, envs[0])
		t.Fatalf("started over damaged block %d; envelope 0, in the chain before the restart: %s %s", victim, st, info)
	}
	t.Logf("start: %v", err)
	if !errors.Is(err, blockstore.ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("block %d", victim)) ||
		!strings.Contains(err.Error(), "memberd ledger verify") {
		t.Fatalf("start: %v; want ErrCorrupt naming block %d and memberd ledger verify", err, victim)
	}
}

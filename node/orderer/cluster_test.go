package orderer

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"go.uber.org/goleak"

	"github.com/memberd/memberd/node/block"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("time.Sleep"))
}

// load sends envs split over streams clients to the current leader, moving
// to the new leader when a stream breaks.
func (cl *cluster) load(t *testing.T, id Identity, total, streams, size int, res *loadResult, onHalf func()) {
	envs, ids := envelopes(t, id, total, size)
	per := total / streams
	var wg sync.WaitGroup
	stopMon := make(chan struct{})
	if onHalf != nil {
		go func() { // mid-load: once a third of the envelopes are answered
			for {
				res.mu.Lock()
				n := len(res.success)
				res.mu.Unlock()
				if n >= total/3 {
					onHalf()
					return
				}
				select {
				case <-stopMon:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		}()
	}
	for s := range streams {
		lo, hi := s*per, (s+1)*per
		if s == streams-1 {
			hi = total
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pos := lo
			deadline := time.Now().Add(60 * time.Second)
			for pos < hi && time.Now().Before(deadline) {
				l := cl.leader(20 * time.Second)
				step := min(hi-pos, max(per/4, 1))
				i, err := broadcast(context.Background(), cl.nodes[l-1].client, envs[pos:pos+step], ids[pos:pos+step], res)
				pos += i
				if err != nil {
					t.Logf("stream %d: %v after %d; reconnecting", s, err, i)
					time.Sleep(100 * time.Millisecond)
				}
			}
			if pos < hi {
				t.Errorf("stream %d: %d envelopes never answered", s, hi-pos)
			}
		}()
	}
	wg.Wait()
	close(stopMon)
}

func testBatch() block.CutterConfig {
	return block.CutterConfig{MaxMessageCount: 500, BatchTimeout: 100 * time.Millisecond}
}

// TestClusterOrdersIdenticalBlocks: 10,000 envelopes from 4 Broadcast
// streams, all answered SUCCESS, each exactly once in the chain, and every
// node holds the same blocks.
func TestClusterOrdersIdenticalBlocks(t *testing.T) {
	total := 10000
	if testing.Short() {
		total = 1000
	}
	cl := newCluster(t, 3, testBatch(), nil)
	cl.leader(10 * time.Second)
	res := newLoadResult()
	client := cl.c.identity(t, "m1", "client1")
	cl.load(t, client, total, 4, 200, res, nil)
	if len(res.success) != total {
		t.Fatalf("%d SUCCESS of %d; other answers %v", len(res.success), total, res.other)
	}
	h := cl.node(cl.leader(time.Second)).Height()
	cl.waitHeight(h, 10*time.Second)
	txids := cl.checkIdentical()
	for id := range res.success {
		if txids[id] != 1 {
			t.Fatalf("tx %s in the chain %d times", id, txids[id])
		}
	}
	t.Logf("%d envelopes in %d blocks", total, h-1)
}

// TestLeaderKilledMidLoad: the leader stops half-way; a new leader takes
// over, no SUCCESS-answered envelope is missing, and the old leader,
// restarted from its disk, catches up to identical blocks.
func TestLeaderKilledMidLoad(t *testing.T) {
	total := 6000
	if testing.Short() {
		total = 1200
	}
	cl := newCluster(t, 3, testBatch(), nil)
	first := cl.leader(10 * time.Second)
	res := newLoadResult()
	client := cl.c.identity(t, "m2", "client2")
	killed := make(chan struct{})
	cl.load(t, client, total, 4, 100, res, func() {
		t.Logf("stopping leader %d", first)
		cl.stop(first)
		close(killed)
	})
	<-killed
	second := cl.leader(10 * time.Second)
	if second == first {
		t.Fatalf("leader still %d", second)
	}
	t.Logf("new leader %d; %d SUCCESS, other %v", second, len(res.success), res.other)
	if len(res.success) < total/2 {
		t.Fatalf("only %d SUCCESS of %d", len(res.success), total)
	}
	h := cl.node(second).Height()
	cl.waitHeight(h, 10*time.Second)
	txids := cl.checkIdentical()
	for id := range res.success {
		if txids[id] == 0 {
			t.Fatalf("SUCCESS-answered tx %s is missing", id)
		}
	}
	cl.start(first)
	cl.waitHeight(h, 20*time.Second)
	txids = cl.checkIdentical()
	for id := range res.success {
		if txids[id] == 0 {
			t.Fatalf("after restart: SUCCESS-answered tx %s is missing", id)
		}
	}
}

// TestRestartedNodeCatchesUpThroughSnapshot: a follower stopped while the
// log is compacted past it (snapshots by entry count, and by bytes as in
// production) gets a raft snapshot on restart and pulls the missing blocks
// from its peers over Deliver.
func TestRestartedNodeCatchesUpThroughSnapshot(t *testing.T) {
	for _, tc := range []struct {
		name string
		tune func(*Config)
	}{
		{"count", func(c *Config) {
			c.Raft.SnapshotEvery = 5
			c.Raft.CatchUpEntries = 2
		}},
		// Blocks of 10 envelopes are about 9 KiB: a snapshot every few
		// blocks, and at most 32 KiB of them kept below it.
		{"bytes", func(c *Config) { c.Raft.SnapshotBytes = 32 << 10 }},
	} {
		t.Run(tc.name, func(t *testing.T) { testCatchUpThroughSnapshot(t, tc.tune) })
	}
}

func testCatchUpThroughSnapshot(t *testing.T, tune func(*Config)) {
	var fetched atomic.Int64 // blocks pulled over Deliver, by any node
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) {
		tune(c)
		c.Fetcher = countingFetcher{c.Fetcher, &fetched}
	})
	l := cl.leader(10 * time.Second)
	lag := l%3 + 1
	cl.stop(lag)
	res := newLoadResult()
	cl.load(t, cl.c.identity(t, "m3", "client3"), 400, 2, 100, res, nil)
	if len(res.success) != 400 {
		t.Fatalf("%d SUCCESS of 400: %v", len(res.success), res.other)
	}
	h := cl.node(cl.leader(time.Second)).Height()
	if n := fetched.Load(); n != 0 {
		t.Fatalf("%d blocks fetched before the lagging node restarted", n)
	}
	cl.start(lag)
	cl.waitHeight(h, 20*time.Second)
	if fetched.Load() == 0 {
		t.Fatalf("node %d caught up without pulling blocks over Deliver (status %+v): the test no longer covers a snapshot", lag, cl.node(lag).Raft().Status())
	}
	t.Logf("node %d pulled %d of %d blocks over Deliver", lag, fetched.Load(), h)
	cl.checkIdentical()
	// It orders again afterwards.
	res2 := newLoadResult()
	cl.load(t, cl.c.identity(t, "m3", "client3b"), 50, 1, 100, res2, nil)
	if len(res2.success) != 50 {
		t.Fatalf("after catch-up: %d SUCCESS of 50", len(res2.success))
	}
	cl.waitHeight(cl.node(cl.leader(time.Second)).Height(), 10*time.Second)
	cl.checkIdentical()
}

// TestFollowerForwardsToLeader: with a BroadcastForwarder, Broadcast on a
// follower is admitted there, ordered by the leader and answered SUCCESS
// only once committed; the chain is identical on every node.
func TestFollowerForwardsToLeader(t *testing.T) {
	cl := newForwardingCluster(t, 3, testBatch(), nil)
	l := cl.leader(10 * time.Second)
	f := l%3 + 1
	total := 2000
	if testing.Short() {
		total = 400
	}
	envs, ids := envelopes(t, cl.c.identity(t, "m1", "fwd-client"), total, 200)
	res := newLoadResult()
	if n, err := broadcast(context.Background(), cl.nodes[f-1].client, envs, ids, res); err != nil || n != total {
		t.Fatalf("answered %d of %d: %v", n, total, err)
	}
	if len(res.success) != total {
		t.Fatalf("%d SUCCESS of %d via follower: %v", len(res.success), total, res.other)
	}
	// A duplicate through the follower is refused like on the leader.
	if st, _ := broadcastOne(t, cl.nodes[f-1].client, envs[0]); st != common.Status_BAD_REQUEST {
		t.Fatalf("duplicate via follower: %s", st)
	}
	cl.waitHeight(cl.node(l).Height(), 10*time.Second)
	txids := cl.checkIdentical()
	for id := range res.success {
		if txids[id] != 1 {
			t.Fatalf("tx %s in the chain %d times", id, txids[id])
		}
	}
}

// newForwardingCluster is newCluster with a BroadcastForwarder on every
// node, so that Broadcast on a follower is ordered by the leader.
func newForwardingCluster(t *testing.T, size int, batch block.CutterConfig, tune func(*Config)) *cluster {
	var cl *cluster
	var mu sync.Mutex
	var fwds []*BroadcastForwarder
	cl = newCluster(t, size, batch, func(c *Config) {
		f := &BroadcastForwarder{Peers: map[uint64]ab.AtomicBroadcastClient{}}
		if cl != nil { // a restart
			for _, tn := range cl.nodes {
				f.Peers[tn.id] = tn.client
			}
		}
		mu.Lock()
		fwds = append(fwds, f)
		mu.Unlock()
		c.Forwarder = f
		if tune != nil {
			tune(c)
		}
	})
	for _, f := range fwds {
		for _, tn := range cl.nodes {
			f.Peers[tn.id] = tn.client
		}
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, f := range fwds {
			f.Close()
		}
	})
	return cl
}

// countingFetcher counts the blocks a BlockFetcher hands out.
type countingFetcher struct {
	BlockFetcher
	n *atomic.Int64
}

func (f countingFetcher) FetchBlocks(ctx context.Context, from, to uint64, fn func(raw []byte) error) error {
	return f.BlockFetcher.FetchBlocks(ctx, from, to, func(raw []byte) error {
		f.n.Add(1)
		return fn(raw)
	})
}

func (f countingFetcher) FollowBlocks(ctx context.Context, from uint64, fn func(raw []byte) error) error {
	return f.BlockFetcher.(BlockFollower).FollowBlocks(ctx, from, func(raw []byte) error {
		f.n.Add(1)
		return fn(raw)
	})
}

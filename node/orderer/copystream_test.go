package orderer

import (
	"context"
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/benchload"
	"github.com/memberd/memberd/internal/logtest"
	"github.com/memberd/memberd/node/block"
)

// cutOffClient is a peer as node 4's fetcher sees it: while cut is set,
// Deliver gets no answer (a partitioned or hung peer), a new stream's nor
// an open one's, until its ctx ends.
type cutOffClient struct {
	ab.AtomicBroadcastClient
	cut *atomic.Bool
}

func (c cutOffClient) Deliver(ctx context.Context, opts ...grpc.CallOption) (ab.AtomicBroadcast_DeliverClient, error) {
	if c.cut.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	s, err := c.AtomicBroadcastClient.Deliver(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return cutOffStream{s, c.cut, ctx}, nil
}

type cutOffStream struct {
	ab.AtomicBroadcast_DeliverClient
	cut *atomic.Bool
	ctx context.Context
}

func (s cutOffStream) Recv() (*ab.DeliverResponse, error) {
	r, err := s.AtomicBroadcast_DeliverClient.Recv()
	if s.cut.Load() {
		<-s.ctx.Done()
		return nil, s.ctx.Err()
	}
	return r, err
}

// cutOffPeers makes node 4's fetcher see its peers through cutOffClient,
// cut[i] for Peers[i] (nodes 1..3 in order).
func cutOffPeers(cut *[3]atomic.Bool) func(*Config) {
	return func(c *Config) {
		if c.Raft.ID != 4 {
			return
		}
		f := c.Fetcher.(*DeliverFetcher)
		for i := range f.Peers {
			f.Peers[i] = cutOffClient{f.Peers[i], &cut[i]}
		}
	}
}

// cutAll cuts off (or restores) every peer of node 4's fetcher.
func cutAll(cut *[3]atomic.Bool, on bool) {
	for i := range cut {
		cut[i].Store(on)
	}
}

// checkNoOwnSignature fails unless node id stores every block below h,
// each signed by none but other consenters' orgs (m1..m3).
func (cl *cluster) checkNoOwnSignature(t *testing.T, id uint64, h uint64) {
	t.Helper()
	n := cl.node(id)
	for num := uint64(1); num < h; num++ {
		b, err := n.store.Get(num)
		if err != nil {
			t.Fatalf("node %d block %d: %v", id, num, err)
		}
		sds, err := block.Signatures(b)
		if err != nil {
			t.Fatalf("node %d block %d: %v", id, num, err)
		}
		for _, sd := range sds {
			if msp, _, _ := block.CreatorCertificate(sd.Identity); msp == "m4MSP" {
				t.Fatalf("node %d stores block %d signed by itself", id, num)
			}
		}
	}
}

// TestNewConsenterLeadsUnderLoad: the new consenter (no orderer org of the
// channel config, so it stores the others' copies) is made the leader and
// orders 600 envelopes submitted to it at 200 tx/s: all answered SUCCESS,
// and it keeps the leadership meanwhile (its raft loop, which waits in
// apply for each copy, still sends its heartbeats in time).
func TestNewConsenterLeadsUnderLoad(t *testing.T) {
	cl := newConsenterCluster(t, nil)
	cl.transferTo(t, 4)
	term := cl.node(4).Raft().Status().Term
	envs, _ := envelopes(t, cl.c.identity(t, "m2", "load"), 600, 1024)
	res := benchload.Run(cl.nodes[3].client, envs, 4, 200, 0)
	if res.OK != len(envs) {
		t.Fatalf("%d SUCCESS of %d: %v", res.OK, len(envs), res.Other)
	}
	if st := cl.node(4).Raft().Status(); st.Leader != 4 || st.Term != term {
		t.Fatalf("node 4 lost the leadership under load: leader %d term %d (was 4, term %d)", st.Leader, st.Term, term)
	}
	h := cl.node(4).Height()
	cl.waitHeight(h, 20*time.Second)
	cl.checkIdentical()
	cl.checkNoOwnSignature(t, 4, h)
	t.Logf("%d blocks; p50 %v p99 %v", h, benchload.Percentile(res.Lat, 0.5), benchload.Percentile(res.Lat, 0.99))
}

// TestNewConsenterCopyPeerCutOff: node 4 streams copies from one peer at
// a time. Two of its three peers are cut off (no answer, as a partition or
// a hung process leaves a connection), then the one it streams from
// restarts mid-load: node 4 switches and keeps storing, none of the blocks signed
// by itself. With every peer cut off it stores nothing more (its height
// stays, the others go on: clients of the genesis leader still get
// SUCCESS), and once one answers again it catches up.
func TestNewConsenterCopyPeerCutOff(t *testing.T) {
	var cut [3]atomic.Bool
	cl := newConsenterCluster(t, cutOffPeers(&cut))
	cl.transferTo(t, 1)
	id := cl.c.identity(t, "m2", "load")
	load := func(n int) {
		t.Helper()
		envs, _ := envelopes(t, id, n, 512)
		if res := benchload.Run(cl.nodes[0].client, envs, 2, 200, 0); res.OK != n {
			t.Fatalf("%d SUCCESS of %d: %v", res.OK, n, res.Other)
		}
	}
	// Node 4's fetcher lists nodes 1..3 and asks them in turn: cut off
	// nodes 1 and 2, so that it streams from node 3.
	cut[0].Store(true)
	cut[1].Store(true)
	load(200)
	cl.waitHeight(cl.node(1).Height(), 10*time.Second)
	cut[0].Store(false)
	cut[1].Store(false)

	// The peer it streams from (node 3) restarts mid-load.
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond)
		cl.stop(3)
		time.Sleep(500 * time.Millisecond)
		cl.start(3)
	}()
	load(300)
	<-done
	cl.waitHeight(cl.node(1).Height(), 20*time.Second)

	// Every peer cut off: node 4 stalls, the others go on.
	cutAll(&cut, true)
	h4 := cl.node(4).Height()
	load(200)
	time.Sleep(time.Second)
	if got := cl.node(4).Height(); got > h4+1 {
		t.Fatalf("node 4 stored blocks %d..%d with no peer answering", h4, got-1)
	}
	cutAll(&cut, false)
	h := cl.node(1).Height()
	cl.waitHeight(h, 20*time.Second)
	cl.checkIdentical()
	cl.checkNoOwnSignature(t, 4, h)
}

// TestNewConsenterRestartsMidFetch: node 4 stops while it waits for a
// copy no peer sends (every peer cut off) and restarts with its peers
// answering: it stores every block, none signed by itself, the same chain.
func TestNewConsenterRestartsMidFetch(t *testing.T) {
	var cut [3]atomic.Bool
	cl := newConsenterCluster(t, cutOffPeers(&cut))
	cl.transferTo(t, 1)
	cutAll(&cut, true)
	envs, _ := envelopes(t, cl.c.identity(t, "m2", "load"), 200, 512)
	if res := benchload.Run(cl.nodes[0].client, envs, 2, 200, 0); res.OK != len(envs) {
		t.Fatalf("%d SUCCESS of %d: %v", res.OK, len(envs), res.Other)
	}
	if h4, h1 := cl.node(4).Height(), cl.node(1).Height(); h4 >= h1 {
		t.Fatalf("node 4 at height %d with no peer answering, node 1 at %d", h4, h1)
	}
	cl.stop(4)
	cutAll(&cut, false)
	cl.start(4)
	h := cl.node(1).Height()
	cl.waitHeight(h, 20*time.Second)
	cl.checkIdentical()
	cl.checkNoOwnSignature(t, 4, h)
}

// TestNewConsenterLeadingCutOff: node 4 leads when every peer it takes
// copies from is cut off. It cannot store the blocks it orders, so its
// clients are not answered SUCCESS: they get SERVICE_UNAVAILABLE within the
// stall timeout (the node steps down; its raft loop, waiting for a copy,
// sends no heartbeat and another node is elected), none waits for ever.
// Clients of the new leader get SUCCESS; once the peers answer, node 4
// stores every block, and every envelope answered SUCCESS is in the chain.
func TestNewConsenterLeadingCutOff(t *testing.T) {
	var cut [3]atomic.Bool
	cl := newConsenterCluster(t, cutOffPeers(&cut))
	cl.transferTo(t, 4)
	cutAll(&cut, true)
	id := cl.c.identity(t, "m2", "load")
	envs, _ := envelopes(t, id, 100, 512)
	done := make(chan benchload.Result, 1)
	go func() { done <- benchload.Run(cl.nodes[3].client, envs, 2, 100, 0) }()
	var res benchload.Result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("clients of node 4 not answered within 30 s")
	}
	if res.OK == len(envs) {
		t.Fatal("all SUCCESS, though node 4 could store none of its blocks")
	}
	t.Logf("node 4's clients: %d SUCCESS, %v", res.OK, res.Other)
	l := cl.leader(10 * time.Second)
	for l == 4 {
		time.Sleep(50 * time.Millisecond)
		l = cl.leader(10 * time.Second)
	}
	envs2, ids2 := envelopes(t, id, 100, 512)
	if res2 := benchload.Run(cl.nodes[l-1].client, envs2, 2, 100, 0); res2.OK != len(envs2) {
		t.Fatalf("node %d, leading: %d SUCCESS of %d: %v", l, res2.OK, len(envs2), res2.Other)
	}
	cutAll(&cut, false)
	h := cl.node(l).Height()
	cl.waitHeight(h, 20*time.Second)
	txids := cl.checkIdentical()
	cl.checkNoOwnSignature(t, 4, h)
	for _, id := range ids2 {
		if txids[id] != 1 {
			t.Fatalf("tx %s answered SUCCESS is %d times in the chain", id, txids[id])
		}
	}
}

// tamperClient is a peer whose Deliver blocks reach node 4 changed by
// tamper (a copy an older build, or a broken peer, would send).
type tamperClient struct {
	ab.AtomicBroadcastClient
	tamper func(*common.Block)
	served *atomic.Int64
}

func (c tamperClient) Deliver(ctx context.Context, opts ...grpc.CallOption) (ab.AtomicBroadcast_DeliverClient, error) {
	s, err := c.AtomicBroadcastClient.Deliver(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return tamperStream{s, c}, nil
}

type tamperStream struct {
	ab.AtomicBroadcast_DeliverClient
	c tamperClient
}

func (s tamperStream) Recv() (*ab.DeliverResponse, error) {
	r, err := s.AtomicBroadcast_DeliverClient.Recv()
	if b := r.GetBlock(); b != nil && b.Header.Number > 0 {
		b = proto.Clone(b).(*common.Block)
		s.c.tamper(b)
		s.c.served.Add(1)
		r = &ab.DeliverResponse{Type: &ab.DeliverResponse_Block{Block: b}}
	}
	return r, err
}

// TestNewConsenterRefusesCopiesStockPeersRefuse: of node 4's peers, node 1
// serves copies signed by a consenter whose org is no orderer org (node
// 4's own key, as an older build signing anyway), node 2 copies with a
// corrupt signature; node 3's are sound. Node 4 refuses the first two
// (counted), takes node 3's, and stores the same chain, no block signed
// by itself.
func TestNewConsenterRefusesCopiesStockPeersRefuse(t *testing.T) {
	reg := prometheus.NewRegistry()
	var served [2]atomic.Int64
	cl := newConsenterCluster(t, func(c *Config) {
		if c.Raft.ID != 4 {
			return
		}
		c.Metrics = NewMetrics(reg)
		signer, identity := c.Signer, c.Identity
		resign := func(b *common.Block) {
			lc, err := block.LastConfigIndex(b)
			if err != nil {
				panic(err)
			}
			cm, err := block.ConsenterMetadata(b)
			if err != nil {
				panic(err)
			}
			if err := block.Sign(b, signer, identity, lc, cm, rand.Reader); err != nil {
				panic(err)
			}
		}
		corrupt := func(b *common.Block) {
			md := new(common.Metadata)
			if err := proto.Unmarshal(b.Metadata.Metadata[common.BlockMetadataIndex_SIGNATURES], md); err != nil {
				panic(err)
			}
			for _, s := range md.Signatures {
				s.Signature[len(s.Signature)-1] ^= 1
			}
			raw, err := proto.Marshal(md)
			if err != nil {
				panic(err)
			}
			b.Metadata.Metadata[common.BlockMetadataIndex_SIGNATURES] = raw
		}
		f := c.Fetcher.(*DeliverFetcher)
		f.Peers[0] = tamperClient{f.Peers[0], resign, &served[0]}
		f.Peers[1] = tamperClient{f.Peers[1], corrupt, &served[1]}
	})
	cl.transferTo(t, 1)
	envs, _ := envelopes(t, cl.c.identity(t, "m2", "load"), 200, 512)
	if res := benchload.Run(cl.nodes[0].client, envs, 2, 200, 0); res.OK != len(envs) {
		t.Fatalf("%d SUCCESS of %d: %v", res.OK, len(envs), res.Other)
	}
	h := cl.node(1).Height()
	cl.waitHeight(h, 20*time.Second)
	cl.checkIdentical()
	cl.checkNoOwnSignature(t, 4, h)
	if served[0].Load() == 0 || served[1].Load() == 0 {
		t.Fatalf("node 4 was served %d re-signed and %d corrupt copies: the test exercised nothing", served[0].Load(), served[1].Load())
	}
	if got := logtest.Counter(t, reg, "memberd_ledger_copies_refused_total"); got == 0 {
		t.Error("memberd_ledger_copies_refused_total = 0 after refusing copies")
	}
	n4 := cl.node(4)
	for num := uint64(1); num < h; num++ {
		b, err := n4.store.Get(num)
		if err != nil {
			t.Fatal(err)
		}
		if err := block.VerifySignatures(b, block.VerifyCreatorSignature); err != nil {
			t.Fatalf("node 4 stores block %d with a bad signature: %v", num, err)
		}
	}
}

package orderer

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/node/raftlog/raftlogtest"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testLogger(t testing.TB, name string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", name)
	}
	return nil
}

// consortium is a test consortium with identities for nodes and clients.
type consortium struct {
	cons    *policytest.Consortium
	pol     *policy.Policy                // the genesis policy
	cur     atomic.Pointer[policy.Policy] // a later version, if set
	genesis *common.Block
}

// editDocument, if set, edits the consortium's policy before it is rendered.
type editDocument func(d *policy.Document)

func newConsortium(t testing.TB, members int, batch block.CutterConfig, edit ...editDocument) *consortium {
	c := &consortium{cons: policytest.New(t, members)}
	if batch != (block.CutterConfig{}) {
		// The policy says what the genesis block says: otherwise the leader
		// would order a CONFIG block at once to make the channel follow it.
		cut, err := block.NewCutter(batch)
		if err != nil {
			t.Fatal(err)
		}
		b := cut.Config()
		l := &c.cons.Template.Ledger
		l.BatchSize = policy.BatchSize{MaxMessageCount: b.MaxMessageCount, AbsoluteMaxBytes: b.AbsoluteMaxBytes, PreferredMaxBytes: b.PreferredMaxBytes}
		l.BatchTimeout = b.BatchTimeout.String()
	}
	for _, e := range edit {
		e(c.cons.Template)
	}
	c.pol = c.cons.Genesis(t)
	css := map[string]channelconfig.Consenter{}
	for _, m := range c.pol.Consenters() {
		cert := c.cons.CAs[m.ID].Issue(t, m.ID+"-tls").Cert
		p := hsm.EncodePEM("CERTIFICATE", cert.Raw)
		css[m.ID] = channelconfig.Consenter{Host: "127.0.0.1", Port: 7050, ClientTLSCert: p, ServerTLSCert: p}
	}
	cc, err := ChannelConfig(c.pol, css)
	if err != nil {
		t.Fatal(err)
	}
	if c.genesis, err = channelconfig.GenesisBlock(cc, time.Now(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	return c
}

// identity issues a certificate from member's CA.
func (c *consortium) identity(t testing.TB, member, cn string) Identity {
	leaf := c.cons.CAs[member].Issue(t, cn)
	return Identity{MSPID: c.policy().Member(member).MSPID, Cert: leaf.Cert, Signer: leaf.Key}
}

// nodeIdentity issues a node's block-signing certificate from member's CA:
// OU=orderer, as the channel config's NodeOUs require (CheckSigner).
func (c *consortium) nodeIdentity(t testing.TB, member, cn string) Identity {
	leaf := c.cons.CAs[member].Issue(t, cn, testpki.OU(channelconfig.OrdererOU))
	return Identity{MSPID: c.policy().Member(member).MSPID, Cert: leaf.Cert, Signer: leaf.Key}
}

func (c *consortium) policy() *policy.Policy {
	if p := c.cur.Load(); p != nil {
		return p
	}
	return c.pol
}

// cluster is n ordering nodes in one process: raft over raftlogtest's
// loopback network, AtomicBroadcast over loopback gRPC.
type cluster struct {
	t     testing.TB
	c     *consortium
	net   *raftlogtest.Network
	nodes []*tnode
	tune  func(*Config)
}

type tnode struct {
	id     uint64
	name   string
	dir    string
	ident  Identity
	np     atomic.Pointer[Node]
	cancel context.CancelFunc
	runErr chan error
	addr   string
	ln     net.Listener // the gRPC listener before the first start
	srv    *grpc.Server
	conn   *grpc.ClientConn
	client ab.AtomicBroadcastClient
}

func newCluster(t testing.TB, size int, batch block.CutterConfig, tune func(*Config), edit ...editDocument) *cluster {
	cl := &cluster{t: t, c: newConsortium(t, size, batch, edit...), net: raftlogtest.NewNetwork(), tune: tune}
	for range size {
		cl.addSlot()
	}
	for _, tn := range cl.nodes {
		cl.start(tn.id)
	}
	t.Cleanup(func() {
		for _, tn := range cl.nodes {
			cl.stop(tn.id)
			tn.conn.Close()
		}
	})
	return cl
}

// addSlot adds node n<k> of member m<k> (k = len(cl.nodes)+1) to the
// cluster without starting it; the member must be in the current policy.
func (cl *cluster) addSlot() *tnode {
	t := cl.t
	i := len(cl.nodes) + 1
	tn := &tnode{id: uint64(i), name: fmt.Sprintf("n%d", i), dir: t.TempDir()}
	tn.ident = cl.c.nodeIdentity(t, fmt.Sprintf("m%d", i), tn.name)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tn.addr, tn.ln = ln.Addr().String(), ln // kept for the first start, so the port cannot be taken meanwhile
	conn, err := grpc.NewClient(tn.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	tn.conn, tn.client = conn, ab.NewAtomicBroadcastClient(conn)
	cl.nodes = append(cl.nodes, tn)
	return tn
}

func (cl *cluster) node(id uint64) *Node { return cl.nodes[id-1].np.Load() }

func (cl *cluster) start(id uint64) {
	cl.t.Helper()
	if err := cl.tryStart(id); err != nil {
		cl.t.Fatalf("start node %d: %v", id, err)
	}
}

// tryStart is start that returns New's error (the node is then not
// running) instead of failing the test.
func (cl *cluster) tryStart(id uint64) error {
	t := cl.t
	t.Helper()
	tn := cl.nodes[id-1]
	ln, err := cl.net.Listen(tn.name)
	if err != nil {
		t.Fatal(err)
	}
	var peers []raftlog.Peer
	var fetchFrom []ab.AtomicBroadcastClient
	for _, o := range cl.nodes {
		peers = append(peers, raftlog.Peer{ID: o.id, Addr: o.name, Name: fmt.Sprintf("m%d", o.id)})
		if o != tn {
			fetchFrom = append(fetchFrom, o.client)
		}
	}
	cfg := Config{
		Raft: raftlog.Config{ID: id, Peers: peers, Dir: tn.dir + "/raft",
			Dialer: cl.net.Dialer(tn.name), Listener: ln,
			TickInterval: 20 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
			Logger: testLogger(t, tn.name)},
		BlockDir: tn.dir + "/blocks", Genesis: cl.c.genesis,
		Signer: tn.ident.Signer, Identity: tn.ident.Serialized(), Policy: cl.c.policy,
		Fetcher:       &DeliverFetcher{Peers: fetchFrom, Identity: tn.ident, Channel: "trade"},
		SubmitTimeout: 10 * time.Second, StallTimeout: 2 * time.Second,
		Logger: testLogger(t, tn.name),
	}
	if cl.tune != nil {
		cl.tune(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	srv, err := NewServer(ServerConfig{Lookup: func(ch string) *Node {
		if n := tn.np.Load(); n != nil && n.ChannelID() == ch {
			return n
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	gl := tn.ln
	tn.ln = nil
	if gl == nil { // a restart: the same port again
		if gl, err = listenRetry(tn.addr); err != nil {
			t.Fatal(err)
		}
	}
	tn.srv = grpc.NewServer()
	srv.Register(tn.srv)
	go tn.srv.Serve(gl)
	ctx, cancel := context.WithCancel(context.Background())
	tn.np.Store(n)
	tn.cancel, tn.runErr = cancel, make(chan error, 1)
	go func() { tn.runErr <- n.Run(ctx) }()
	return nil
}

// listenRetry listens on addr again after a restart (the port may linger briefly).
func listenRetry(addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, err
}

func (cl *cluster) stop(id uint64) {
	tn := cl.nodes[id-1]
	n := tn.np.Load()
	if n == nil {
		return
	}
	tn.srv.Stop()
	tn.cancel()
	if err := <-tn.runErr; err != nil {
		cl.t.Errorf("node %d Run: %v", id, err)
	}
	if err := n.Close(); err != nil {
		cl.t.Errorf("node %d Close: %v", id, err)
	}
	tn.np.Store(nil)
}

// leader waits until a running node is leader and ready to cut.
func (cl *cluster) leader(timeout time.Duration) uint64 {
	cl.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, tn := range cl.nodes {
			if n := tn.np.Load(); n != nil && n.IsLeader() {
				return tn.id
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	cl.t.Fatalf("no leader within %v", timeout)
	return 0
}

// waitHeight waits until every running node has at least h blocks.
func (cl *cluster) waitHeight(h uint64, timeout time.Duration) {
	cl.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		for _, tn := range cl.nodes {
			if n := tn.np.Load(); n != nil && n.Height() < h {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			for _, tn := range cl.nodes {
				if n := tn.np.Load(); n != nil {
					cl.t.Logf("node %d height %d", tn.id, n.Height())
				}
			}
			cl.t.Fatalf("nodes did not reach height %d within %v", h, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkIdentical checks every running node holds the same chain (headers and
// data; the signatures are each node's own) and that each block verifies and
// carries a valid signature by the node that stored it. It returns the tx ids
// in the chain, with their counts.
func (cl *cluster) checkIdentical() map[string]int {
	cl.t.Helper()
	var ref *Node
	for _, tn := range cl.nodes {
		if n := tn.np.Load(); n != nil {
			ref = n
			break
		}
	}
	txids := map[string]int{}
	h := ref.Height()
	for _, tn := range cl.nodes {
		n := tn.np.Load()
		if n == nil {
			continue
		}
		if n.Height() != h {
			cl.t.Fatalf("node %d height %d, node %d height %d", tn.id, n.Height(), ref.raft.ID(), h)
		}
	}
	var prev *common.Block
	for i := uint64(0); i < h; i++ {
		var first *common.Block
		for _, tn := range cl.nodes {
			n := tn.np.Load()
			if n == nil {
				continue
			}
			b, err := n.store.Get(i)
			if err != nil {
				cl.t.Fatal(err)
			}
			if first == nil {
				first = b
			} else if string(block.HeaderHash(b.Header)) != string(block.HeaderHash(first.Header)) ||
				string(block.DataHash(b.Data)) != string(block.DataHash(first.Data)) {
				cl.t.Fatalf("block %d differs between nodes", i)
			}
			if i > 0 {
				if err := block.VerifySignatures(b, block.VerifyCreatorSignature); err != nil {
					cl.t.Fatalf("node %d block %d: %v", tn.id, i, err)
				}
			}
		}
		if err := block.Verify(first, prev); err != nil {
			cl.t.Fatalf("block %d: %v", i, err)
		}
		prev = first
		if i == 0 {
			continue
		}
		for _, raw := range first.Data.Data {
			e, err := block.ParseEnvelope(raw)
			if err != nil {
				cl.t.Fatal(err)
			}
			txids[e.TxID()]++
		}
	}
	return txids
}

// envelopes pre-builds count signed transactions of size bytes of data.
func envelopes(t testing.TB, id Identity, count, size int) ([]*common.Envelope, []string) {
	envs := make([]*common.Envelope, count)
	ids := make([]string, count)
	data := make([]byte, size)
	now := time.Now()
	for i := range envs {
		var err error
		copy(data, fmt.Sprintf("tx-%d", i))
		if envs[i], ids[i], err = NewTransaction(id, "trade", data, now); err != nil {
			t.Fatal(err)
		}
	}
	return envs, ids
}

// loadResult is what a Broadcast client learnt.
type loadResult struct {
	mu      sync.Mutex
	success map[string]bool
	other   map[common.Status]int
}

func newLoadResult() *loadResult {
	return &loadResult{success: map[string]bool{}, other: map[common.Status]int{}}
}

// broadcast sends envs on one stream to client and records the answers.
// It returns the index of the first envelope not answered (len(envs) when
// all were).
func broadcast(ctx context.Context, client ab.AtomicBroadcastClient, envs []*common.Envelope, ids []string, res *loadResult) (int, error) {
	return broadcastEach(ctx, client, envs, func(i int, st common.Status) {
		res.mu.Lock()
		if st == common.Status_SUCCESS {
			res.success[ids[i]] = true
		} else {
			res.other[st]++
		}
		res.mu.Unlock()
	})
}

// broadcastEach sends envs on one stream to client and calls answer with
// the index and status of each answer, in order. It returns the index of
// the first envelope not answered (len(envs) when all were).
func broadcastEach(ctx context.Context, client ab.AtomicBroadcastClient, envs []*common.Envelope, answer func(i int, st common.Status)) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Broadcast(ctx)
	if err != nil {
		return 0, err
	}
	sendErr := make(chan error, 1)
	go func() {
		for _, e := range envs {
			if err := stream.Send(e); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- stream.CloseSend()
	}()
	for i := range envs {
		resp, err := stream.Recv()
		if err != nil {
			cancel()
			<-sendErr
			return i, err
		}
		answer(i, resp.Status)
	}
	return len(envs), <-sendErr
}

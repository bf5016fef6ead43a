package sim

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
	"github.com/memberd/memberd/test/sim/simnet"
)

// raftSplit cuts raftlog's wire format (node/raftlog/frame.go: version,
// type, 4-byte length, payload) into frames; only raft messages (type 3)
// may be dropped, duplicated or reordered: the handshake, lane and address
// frames are the connection's own, which a lossy path never drops without
// breaking the connection.
func raftSplit(b []byte) (int, bool) {
	if len(b) < 6 {
		return 0, false
	}
	if b[0] != 1 { // not a frame we know: pass the bytes through
		return len(b), false
	}
	n := 6 + int(binary.BigEndian.Uint32(b[2:6]))
	if len(b) < n {
		return 0, false
	}
	return n, b[1] == 3
}

// ledgerSim is one seed's run: 3 ordering nodes (raft underneath) over a
// simnet network, Broadcast load, and faults.
type ledgerSim struct {
	t       *testing.T
	seed    uint64
	rng     *rand.Rand // the harness's decisions (the network has its own stream)
	nw      *simnet.Network
	cons    *policytest.Consortium
	pol     *policy.Policy
	genesis *common.Block
	nodes   []*simNode
	tune    simTune

	mu     sync.Mutex // guards acked, events, errs
	acked  map[string]bool
	events []string
	errs   map[string]int // client answers other than SUCCESS, by kind
	// history: each tx id's answers other than SUCCESS
	history map[string][]string

	pols        []*policy.Policy // versions 1..4 (policy_test.go)
	removedID   uint64           // the node whose member version 3 drops from the consenters
	removedName string
	removedAt   time.Time      // when every other node had it out of raft (guarded by mu)
	toRemoved   map[string]int // replication sent to it after that, by sender and type (guarded by mu)

	// tunnel: raft goes through the members' tunnels and the relays
	// (tunnel_test.go, TestConsortiumSim) instead of direct links.
	tunnel bool
	tn     *tunnelNet
}

// simTune is what a seed chose.
type simTune struct {
	faults        simnet.Faults
	snapshotEvery uint64
	catchUp       uint64
	maxMsgs       uint32
}

// randomFaults draws fault rates; scale 2 is the harsher mid-run change.
// Dup and Reorder only with -sim.hostile (simnet.Faults: beyond TCP).
func randomFaults(r *rand.Rand, scale float64) simnet.Faults {
	f := simnet.Faults{
		Drop:     r.Float64() * 0.01 * scale,
		Spike:    r.Float64() * 0.02 * scale,
		SpikeMax: time.Duration(200+r.IntN(2000)) * time.Millisecond,
		MinDelay: time.Duration(r.IntN(5)) * time.Millisecond,
	}
	f.MaxDelay = f.MinDelay + time.Duration(r.IntN(int(30*scale)))*time.Millisecond
	if *flagHostile {
		f.Dup, f.Reorder = r.Float64()*0.05*scale, r.Float64()*0.05*scale
	}
	return f
}

type simNode struct {
	id     uint64
	name   string
	member string
	dir    string
	ident  orderer.Identity
	np     atomic.Pointer[orderer.Node]
	clock  atomic.Int64 // offset of this node's clock, ns (clock jumps)

	polDir, stateDir string
	watcher          atomic.Pointer[policy.Watcher]
	delivered        map[uint64]bool // policy versions written to polDir (guarded by s.mu)
	polVersion       uint64          // the version its last watcher applied (guarded by s.mu)
	cancel           context.CancelFunc
	runErr           chan error
}

func (s *ledgerSim) logf(format string, args ...any) {
	msg := fmt.Sprintf("t=%v ", time.Since(simEpoch).Round(time.Millisecond)) + fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.events = append(s.events, msg)
	s.mu.Unlock()
	if testing.Verbose() {
		s.t.Log(msg)
	}
}

// simEpoch is synctest's virtual start of time.
var simEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func newLedgerSim(t *testing.T, seed uint64, tunnel bool) *ledgerSim {
	s := &ledgerSim{t: t, seed: seed, tunnel: tunnel, rng: rand.New(rand.NewPCG(seed, 0x1ed9e7)),
		acked: map[string]bool{}, errs: map[string]int{}, history: map[string][]string{}, toRemoved: map[string]int{}}
	r := s.rng
	s.tune = simTune{
		faults:        randomFaults(r, 1),
		snapshotEvery: []uint64{0, 5, 20}[r.IntN(3)],
		catchUp:       []uint64{0, 2, 10}[r.IntN(3)],
		maxMsgs:       []uint32{1, 10, 100}[r.IntN(3)],
	}
	s.removedID = uint64(1 + r.IntN(3))
	s.removedName = fmt.Sprintf("n%d", s.removedID)
	if tunnel {
		// The network carries the TLS links to the relays; raft frames are
		// observed on the raft connections in the tunnel (observedConn).
		s.nw = simnet.New(simnet.Config{Seed: seed, Faults: linkFaults(s.tune.faults), Split: tlsSplit, SilentStalls: true, UnboundedWrites: true})
		s.tn = newTunnelNet(s)
	} else {
		s.nw = simnet.New(simnet.Config{Seed: seed, Faults: s.tune.faults, Split: raftSplit, Observe: s.observe})
	}

	testpki.SetSerial(int64(seed) << 20) // serials from the seed, not the wall clock
	s.cons = policytest.New(t, 3)
	l := &s.cons.Template.Ledger
	l.BatchSize.MaxMessageCount = s.tune.maxMsgs
	l.BatchTimeout = "200ms"
	s.pol = s.cons.Genesis(t)
	s.pols = []*policy.Policy{s.pol}
	s.simPolicies(fmt.Sprintf("m%d", s.removedID))
	css := map[string]channelconfig.Consenter{}
	for _, m := range s.pol.Consenters() {
		cert := s.cons.CAs[m.ID].Issue(t, m.ID+"-tls").Cert
		p := hsm.EncodePEM("CERTIFICATE", cert.Raw)
		css[m.ID] = channelconfig.Consenter{Host: m.ID, Port: 7050, ClientTLSCert: p, ServerTLSCert: p}
	}
	cc, err := orderer.ChannelConfig(s.pol, css)
	if err != nil {
		t.Fatal(err)
	}
	if s.genesis, err = channelconfig.GenesisBlock(cc, time.Now(), crand.Reader); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		member := fmt.Sprintf("m%d", i)
		n := &simNode{id: uint64(i), name: fmt.Sprintf("n%d", i), member: member, dir: t.TempDir()}
		leaf := s.cons.CAs[member].Issue(t, n.name, testpki.OU(channelconfig.OrdererOU))
		n.ident = orderer.Identity{MSPID: s.pol.Member(member).MSPID, Cert: leaf.Cert, Signer: leaf.Key}
		n.polDir, n.stateDir, n.delivered = n.dir+"/policy", n.dir+"/policy-state", map[uint64]bool{}
		if err := os.Mkdir(n.polDir, 0o700); err != nil {
			t.Fatal(err)
		}
		s.nodes = append(s.nodes, n)
		s.deliver(n, false, 1)
	}
	return s
}

func (s *ledgerSim) node(id uint64) *orderer.Node { return s.nodes[id-1].np.Load() }

// start runs node id from its data directory (a restart when it ran before).
func (s *ledgerSim) start(id uint64) {
	t := s.t
	n := s.nodes[id-1]
	var peers []raftlog.Peer
	for _, o := range s.nodes {
		peers = append(peers, raftlog.Peer{ID: o.id, Addr: o.name, Name: o.member})
	}
	var log *slog.Logger
	if testing.Verbose() && *flagLogs {
		log = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", n.name)
	}
	var dialer raftlog.Dialer = s.nw.Dialer(n.name)
	var listener net.Listener
	if s.tn != nil {
		dialer, listener = s.tn.raftEndpoints(n, s.tn.startHost(n))
	} else {
		listener = s.nw.Listen(n.name)
	}
	cfg := orderer.Config{
		Raft: raftlog.Config{ID: id, Peers: peers, Dir: n.dir + "/raft",
			Dialer: dialer, Listener: listener,
			SnapshotEvery: s.tune.snapshotEvery, CatchUpEntries: s.tune.catchUp,
			Logger: log},
		BlockDir: n.dir + "/blocks", Genesis: s.genesis,
		Signer: n.ident.Signer, Identity: n.ident.Serialized(), Policy: func() *policy.Policy { return n.watcher.Load().Current() },
		Membership: &orderer.Membership{
			Addr:     func(m string) string { return "n" + m[1:] },
			ID:       func(m string) uint64 { var k uint64; fmt.Sscanf(m, "m%d", &k); return k },
			Interval: 500 * time.Millisecond,
		},
		Fetcher:       &simFetcher{s: s, self: n},
		Forwarder:     &simForwarder{s: s, self: n},
		SubmitTimeout: 10 * time.Second,
		Now:           func() time.Time { return time.Now().Add(time.Duration(n.clock.Load())) },
		Logger:        log,
	}
	on, err := orderer.New(cfg)
	if err != nil {
		cfg.Raft.Listener.Close()
		t.Fatalf("seed %d: start node %d: %v", s.seed, id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.runErr = cancel, make(chan error, 1)
	n.np.Store(on)
	go func() { n.runErr <- on.Run(ctx) }()
}

// stop stops node id the way a crash looks to its peers: its connections
// reset at once, then the process is gone. (Its files keep what it wrote:
// the sim does not model losing unsynced writes.)
func (s *ledgerSim) stop(id uint64) {
	n := s.nodes[id-1]
	on := n.np.Load()
	if on == nil {
		return
	}
	n.np.Store(nil)
	s.nw.Kill(n.name)
	n.cancel()
	if err := <-n.runErr; err != nil && !errors.Is(err, context.Canceled) {
		s.t.Errorf("seed %d: node %d Run: %v", s.seed, id, err)
	}
	if err := on.Close(); err != nil {
		s.t.Errorf("seed %d: node %d Close: %v", s.seed, id, err)
	}
	if s.tn != nil {
		s.tn.stopHost(n) // after the node: its raft listener is in the tunnel
	}
}

// simFetcher reads blocks straight from the stores of the peers this node
// can reach (Deliver over the network, without gRPC).
type simFetcher struct {
	s    *ledgerSim
	self *simNode
}

func (f *simFetcher) FetchBlocks(ctx context.Context, from, to uint64, fn func(raw []byte) error) error {
	for _, o := range f.s.nodes {
		if o == f.self || !f.s.reachable(o.name, f.self.name) {
			continue
		}
		on := o.np.Load()
		if on == nil {
			continue
		}
		for ; from <= to && from < on.Height(); from++ {
			b, err := on.Store().Get(from)
			if err != nil {
				break
			}
			raw, err := proto.Marshal(b)
			if err != nil {
				return err
			}
			if err := fn(raw); err != nil {
				return err
			}
		}
		if from > to {
			return nil
		}
	}
	return fmt.Errorf("sim: blocks %d..%d not reachable", from, to)
}

// simForwarder hands a follower's submission to the leader's Node, as
// BroadcastForwarder does over the leader's Broadcast service.
type simForwarder struct {
	s    *ledgerSim
	self *simNode
}

func (f *simForwarder) Forward(ctx context.Context, leader uint64, env []byte) (func(context.Context) error, error) {
	if leader == 0 || leader > uint64(len(f.s.nodes)) {
		return nil, fmt.Errorf("%w: no leader %d", orderer.ErrUnavailable, leader)
	}
	l := f.s.nodes[leader-1]
	on := l.np.Load()
	if on == nil || !f.s.reachable(l.name, f.self.name) {
		return nil, fmt.Errorf("%w: leader %d unreachable", orderer.ErrUnavailable, leader)
	}
	p, err := on.Order(ctx, env)
	if err != nil {
		return nil, err
	}
	return p.Wait, nil
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func marshal(env *common.Envelope) ([]byte, error) { return proto.Marshal(env) }

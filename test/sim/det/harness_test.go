package det

import (
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/blockstore"
	"github.com/memberd/memberd/node/raftlog"
)

const (
	nNodes    = 3
	tickMs    = 100 // virtual milliseconds per raft tick
	cluster   = "det"
	idxSlot   = common.BlockMetadataIndex_COMMIT_HASH // the block's raft index (sim only)
	faultMs   = 30_000                                // fault phase
	settleMs  = 60_000                                // bound of the healed phase
	maxEvents = 100_000
	// maxVictimRaises bounds how often a removed node may raise the term
	// of a leaderless node that applied its removal.
	maxVictimRaises = 4
)

// plant names a bug planted on purpose (-det.plant), to show that the
// simulation finds it and that the failing seed reproduces.
type plant string

const (
	plantNone plant = ""
	// plantAckEarly: the client is answered SUCCESS as soon as the leader
	// proposed the batch, before it is committed on a quorum.
	plantAckEarly plant = "ack-early"
	// plantNoSync: the WAL never fsyncs (raftlog.Stepper's UnsafeNoSync);
	// a power loss then takes what raft took as durable.
	plantNoSync plant = "no-sync"
	// plantNoInstall: a snapshot installed from the leader is not recorded
	// in the WAL (raftlog.Stepper's UnsafeNoInstallRecord), so replay
	// cannot drop the log it replaced.
	plantNoInstall plant = "no-install-record"
)

// event kinds, in the order they run at one instant (then by sequence).
const (
	evDeliver = iota
	evTick
	evClient
	evFault
	evRestart
	evHeal
	evMember
)

type event struct {
	at   int64
	kind int
	seq  uint64
	node int // target (deliver, restart, heal)
	from int
	raw  []byte // marshalled raftpb.Message
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	if h[i].kind != h[j].kind {
		return h[i].kind < h[j].kind
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

type proposal struct {
	seq uint64
	txs []string
}

type node struct {
	id       int // 1..nNodes
	dir      string
	bdir     string
	st       *raftlog.Stepper
	bs       *blockstore.Store
	up       bool
	cutter   *block.Cutter
	props    []proposal // proposed here, not yet applied here
	lastIdx  uint64     // raft index of the last stored block
	txs      map[string]bool
	out      []raftpb.Message
	jumpLeft int // clock jump: extra ticks to run
}

type clientTx struct {
	id    string
	env   []byte
	next  int64 // virtual ms of the next (re)submission
	acked bool
}

type params struct {
	drop, dup       float64 // per message
	maxDelay        int64   // ms
	crashEvery      int64   // mean ms between faults
	powerLoss       float64 // share of crashes that lose unsynced writes
	snapEvery       uint64
	segBytes        int64
	batchTimeout    time.Duration
	maxMsgs         uint32
	txEvery         int64 // mean ms between client envelopes
	reorder         bool
	partitionSilent bool
}

type result struct {
	hash       string
	events     int
	blocks     uint64
	acked      int
	removal    string // "" (none), "learnt" or "unaware": the victim at the end
	raises     int    // terms raised by the removed node's messages
	snaps      int    // snapshots delivered
	divergent  int    // of them, over a log with another term at their index
	violations []string
}

type sim struct {
	t      testing.TB
	seed   uint64
	plant  plant
	rng    *rand.Rand
	p      params
	now    int64
	q      eventHeap
	seq    uint64
	nodes  [nNodes + 1]*node
	cut    [nNodes + 1][nNodes + 1]bool // link i->j cut
	trace  hash.Hash
	nev    int
	canon  [][]byte // header hash of block n, first stored
	txs    []*clientTx
	byID   map[string]*clientTx
	ntx    int
	faults bool
	viol   []string
	logf   func(string, ...any)
	base   string // the nodes' directories are under it
	// Membership (seeds that draw it): victim is removed from the cluster
	// at removeAt by whichever node leads then (retried until every other
	// node applied it); 0: no removal.
	victim    int
	removeAt  int64
	removeSeq uint64           // the last proposal, on removeSt
	removeSt  *raftlog.Stepper // (the node's Stepper then: a restart makes a new one)
	removed   bool             // every other node applied the removal
	// retire: once removed, the victim is retired (Stepper.Retire, again
	// at each restart), as the application does when its policy drops
	// the member; campaigns counts its elections since (re)tired.
	retire      bool
	campaigns   int
	removedSeen bool // at the end, the victim knew it was removed
	// victimRaises: the victim's messages raised the term of a node that
	// had applied its removal (and knew no leader).
	victimRaises int
	// snaps: snapshots delivered; divergent: of them, over a log with
	// another term at the snapshot's index.
	snaps, divergent int
}

func (s *sim) ev(format string, args ...any) {
	s.nev++
	fmt.Fprintf(s.trace, "%d ", s.now)
	fmt.Fprintf(s.trace, format, args...)
	s.trace.Write([]byte{'\n'})
	if s.logf != nil {
		s.logf("t=%d "+format, append([]any{s.now}, args...)...)
	}
}

func (s *sim) violate(format string, args ...any) {
	msg := fmt.Sprintf("t=%d: ", s.now) + fmt.Sprintf(format, args...)
	msg = strings.ReplaceAll(msg, s.base, "$DIR") // a temporary directory's random name
	if len(s.viol) < 20 {
		s.viol = append(s.viol, msg)
	}
	s.ev("VIOLATION %s", msg)
}

func (s *sim) push(e event) {
	s.seq++
	e.seq = s.seq
	heap.Push(&s.q, e)
}

// run runs one seed. The caller must be the test's only goroutine using
// crypto/rand: cryptotest.SetGlobalRandom makes it a stream of the seed.
func run(t *testing.T, seed uint64, pl plant, logf func(string, ...any)) result {
	cryptotest.SetGlobalRandom(t, seed^0xde7e5eed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	s := &sim{t: t, seed: seed, plant: pl, rng: rng, trace: sha256.New(), byID: map[string]*clientTx{}, logf: logf, faults: true}
	s.p = params{
		drop:            rng.Float64() * 0.15,
		dup:             rng.Float64() * 0.05,
		maxDelay:        1 + rng.Int64N(80),
		crashEvery:      1000 + rng.Int64N(4000),
		powerLoss:       rng.Float64(),
		snapEvery:       uint64(3 + rng.IntN(40)),
		segBytes:        int64(2048 + rng.IntN(64<<10)),
		batchTimeout:    time.Duration(50+rng.IntN(500)) * time.Millisecond,
		maxMsgs:         uint32(1 + rng.IntN(10)),
		txEvery:         20 + rng.Int64N(200),
		reorder:         rng.IntN(2) == 0,
		partitionSilent: rng.IntN(2) == 0,
	}
	s.ev("params %+v plant=%q", s.p, pl)
	// Membership draws come from their own stream, so that a seed without
	// a removal runs exactly as before membership was simulated.
	if mrng := rand.New(rand.NewPCG(seed, 0x4e4d)); mrng.IntN(2) == 0 {
		s.victim = 1 + mrng.IntN(nNodes)
		s.removeAt = 1000 + mrng.Int64N(faultMs-5000)
		s.retire = mrng.IntN(2) == 0
		s.ev("membership: n%d is removed at %d, retired=%v", s.victim, s.removeAt, s.retire)
	}
	base := t.TempDir()
	if st, err := os.Stat(*flagDir); err == nil && st.IsDir() && *flagDir != "" {
		if base, err = os.MkdirTemp(*flagDir, "det-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(base) })
	}
	s.base = base
	for i := 1; i <= nNodes; i++ {
		n := &node{id: i, dir: filepath.Join(base, fmt.Sprint("raft", i)), bdir: filepath.Join(base, fmt.Sprint("blocks", i))}
		s.nodes[i] = n
		if err := s.start(n); err != nil {
			t.Fatalf("seed %d: start node %d: %v", seed, i, err)
		}
	}
	s.push(event{at: tickMs, kind: evTick})
	s.push(event{at: s.rng.Int64N(s.p.txEvery) + 1, kind: evClient})
	s.push(event{at: s.rng.Int64N(s.p.crashEvery) + 1, kind: evFault})
	s.push(event{at: faultMs, kind: evHeal})
	if s.victim != 0 {
		s.push(event{at: s.removeAt, kind: evMember})
	}
	for len(s.q) > 0 {
		e := heap.Pop(&s.q).(event)
		s.now = e.at
		if s.now > faultMs+settleMs || len(s.viol) >= 20 {
			break
		}
		if s.nev > maxEvents {
			// A seed makes 3,000-30,000 events: this many is a livelock
			// (seen with the no-sync plant: a leader and a follower that
			// lost entries it had acknowledged exchange appends and
			// rejections without end).
			s.violate("livelock: more than %d events", maxEvents)
			break
		}
		switch e.kind {
		case evDeliver:
			s.deliver(e)
		case evTick:
			s.tick()
			if !s.faults && s.settled() {
				s.q = s.q[:0]
				continue
			}
			s.push(event{at: s.now + tickMs, kind: evTick})
		case evClient:
			s.client()
			if s.faults {
				s.push(event{at: s.now + 1 + s.rng.Int64N(2*s.p.txEvery), kind: evClient})
			} else {
				s.push(event{at: s.now + 500, kind: evClient})
			}
		case evFault:
			if s.faults {
				s.fault()
				s.push(event{at: s.now + 1 + s.rng.Int64N(2*s.p.crashEvery), kind: evFault})
			}
		case evRestart:
			s.restart(e.node)
		case evHeal:
			s.heal(e.node)
		case evMember:
			if !s.member() {
				s.push(event{at: s.now + 1000, kind: evMember})
			}
		}
		s.process()
	}
	s.finish()
	for i := 1; i <= nNodes; i++ {
		n := s.nodes[i]
		if n.up {
			n.st.Close()
			n.bs.Close()
		}
	}
	acked := 0
	for _, c := range s.txs {
		if c.acked {
			acked++
		}
	}
	r := result{hash: hex.EncodeToString(s.trace.Sum(nil)), events: s.nev, blocks: uint64(len(s.canon)), acked: acked, violations: s.viol,
		snaps: s.snaps, divergent: s.divergent, raises: s.victimRaises}
	switch {
	case s.victim == 0:
	case s.removedSeen:
		r.removal = "learnt"
	default:
		r.removal = "unaware"
	}
	return r
}

// start opens node n's block store and raft log (after a crash: reopens
// them from its directories).
func (s *sim) start(n *node) error {
	bs, err := blockstore.Open(n.bdir, blockstore.Config{})
	if err != nil {
		return err
	}
	n.bs, n.txs, n.lastIdx = bs, map[string]bool{}, 0
	for h := uint64(0); h < bs.Height(); h++ {
		b, err := bs.Get(h)
		if err != nil {
			return err
		}
		for _, env := range b.Data.Data {
			n.txs[txID(env)] = true
		}
		n.lastIdx = binary.BigEndian.Uint64(b.Metadata.Metadata[idxSlot])
	}
	var peers []raftlog.Peer
	for i := 1; i <= nNodes; i++ {
		peers = append(peers, raftlog.Peer{ID: uint64(i), Name: fmt.Sprint("n", i), Addr: fmt.Sprint("n", i, ":7050")})
	}
	cfg := raftlog.Config{
		ID: uint64(n.id), Cluster: cluster, Dir: n.dir, Peers: peers,
		TickInterval: tickMs * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
		SnapshotEvery: s.p.snapEvery, CatchUpEntries: s.p.snapEvery / 2, SegmentBytes: s.p.segBytes,
		Applied: n.lastIdx,
		Apply:   func(_ context.Context, c raftlog.Commit) error { return s.apply(n, c) },
		SnapshotData: func(uint64) ([]byte, error) {
			return binary.BigEndian.AppendUint64(nil, n.bs.Height()), nil
		},
	}
	st, err := raftlog.NewStepper(cfg, func(ms []raftpb.Message) { n.out = append(n.out, ms...) })
	if err != nil {
		bs.Close()
		return err
	}
	switch s.plant {
	case plantNoSync:
		st.UnsafeNoSync()
	case plantNoInstall:
		st.UnsafeNoInstallRecord()
	}
	n.st, n.up, n.props = st, true, nil
	n.cutter, _ = block.NewCutter(block.CutterConfig{MaxMessageCount: s.p.maxMsgs, BatchTimeout: s.p.batchTimeout})
	return nil
}

var errNoSource = errors.New("no live peer has the blocks")

// apply is Config.Apply: blocks built from the committed batches (tx ids
// already in the chain left out, as the ledger deduplicates resubmitted
// envelopes), appended to the block store; a snapshot fetches the blocks
// from a live peer's store.
func (s *sim) apply(n *node, c raftlog.Commit) error {
	if c.Snapshot != nil {
		want := binary.BigEndian.Uint64(c.Snapshot.Data)
		for h := n.bs.Height(); h < want; h++ {
			var raw []byte
			for i := 1; i <= nNodes && raw == nil; i++ {
				if p := s.nodes[i]; p != n && p.up && p.bs.Height() > h {
					raw, _ = p.bs.GetRaw(h)
				}
			}
			if raw == nil {
				return fmt.Errorf("block %d: %w", h, errNoSource)
			}
			b, err := block.Unmarshal(raw)
			if err != nil {
				return err
			}
			if err := s.store(n, b); err != nil {
				return err
			}
		}
		return nil
	}
	for _, e := range c.Entries {
		var envs [][]byte
		for _, env := range decodeBatch(e.Data) {
			if id := txID(env); !n.txs[id] {
				n.txs[id] = true
				envs = append(envs, env)
			}
		}
		if len(envs) == 0 {
			continue
		}
		var prev []byte
		if h := n.bs.LastHeader(); h != nil {
			prev = block.HeaderHash(h)
		}
		b := block.New(n.bs.Height(), prev, envs)
		b.Metadata.Metadata[idxSlot] = binary.BigEndian.AppendUint64(nil, e.Index)
		if err := s.store(n, b); err != nil {
			return err
		}
	}
	return nil
}

func (s *sim) store(n *node, b *common.Block) error {
	if err := n.bs.Append(b); err != nil {
		return err
	}
	for _, env := range b.Data.Data {
		n.txs[txID(env)] = true
	}
	n.lastIdx = binary.BigEndian.Uint64(b.Metadata.Metadata[idxSlot])
	h := block.HeaderHash(b.Header)
	num := b.Header.Number
	s.ev("store n%d block %d idx %d hash %x txs %d", n.id, num, n.lastIdx, h[:8], len(b.Data.Data))
	switch {
	case num < uint64(len(s.canon)):
		if string(s.canon[num]) != string(h) {
			s.violate("node %d stored block %d with hash %x, another node has %x: chains are not prefixes of each other", n.id, num, h[:8], s.canon[num][:8])
		}
	case num == uint64(len(s.canon)):
		s.canon = append(s.canon, h)
	}
	return nil
}

func encodeBatch(envs [][]byte) []byte {
	var b []byte
	for _, e := range envs {
		b = binary.AppendUvarint(b, uint64(len(e)))
		b = append(b, e...)
	}
	return b
}

func decodeBatch(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		l, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < l {
			return out
		}
		out = append(out, b[k:k+int(l)])
		b = b[k+int(l):]
	}
	return out
}

// txID: an envelope is "tx-<n>:" then padding.
func txID(env []byte) string {
	for i, c := range env {
		if c == ':' {
			return string(env[:i])
		}
	}
	return string(env)
}

func (s *sim) leader(n *node) bool {
	st := n.st.Status()
	return st.Leader == uint64(n.id) && st.State == raft.StateLeader.String()
}

// tick: every live node's clock moves one tick (a clock jump: several);
// the leader's cutter cuts what is due and proposes it.
func (s *sim) tick() {
	s.ev("tick")
	for i := 1; i <= nNodes; i++ {
		n := s.nodes[i]
		if !n.up {
			continue
		}
		k := 1
		if n.jumpLeft > 0 {
			k += n.jumpLeft
			n.jumpLeft = 0
		}
		for range k {
			s.guard(n, func() error { n.st.Tick(); return nil })
		}
		if !n.up {
			continue
		}
		if s.leader(n) {
			if b := n.cutter.Due(s.vtime(), len(n.props)); b != nil {
				s.propose(n, b)
			}
		} else if c, _ := n.cutter.Pending(); c > 0 {
			n.cutter.Cut() // lost leadership: the clients resubmit
		}
	}
}

func (s *sim) vtime() time.Time { return time.Unix(0, 0).Add(time.Duration(s.now) * time.Millisecond) }

func (s *sim) propose(n *node, envs [][]byte) {
	seq, err := n.st.Propose(encodeBatch(envs))
	var ids []string
	for _, e := range envs {
		ids = append(ids, txID(e))
	}
	s.ev("propose n%d %v err=%v", n.id, ids, err)
	if err != nil {
		return
	}
	n.props = append(n.props, proposal{seq: seq, txs: ids})
	if s.plant == plantAckEarly {
		s.ack(n, ids)
	}
}

func (s *sim) ack(n *node, ids []string) {
	for _, id := range ids {
		if c := s.byID[id]; c != nil && !c.acked {
			c.acked = true
			s.ev("ack %s by n%d", id, n.id)
		}
	}
}

// client: a new envelope now and then, and each envelope not yet answered
// SUCCESS goes (again) to a random node, taken only by the leader.
func (s *sim) client() {
	if s.faults {
		s.ntx++
		pad := make([]byte, 8+s.rng.IntN(200))
		for i := range pad {
			pad[i] = byte('a' + s.rng.IntN(26))
		}
		id := fmt.Sprintf("tx-%d", s.ntx)
		c := &clientTx{id: id, env: append([]byte(id+":"), pad...), next: s.now}
		s.txs = append(s.txs, c)
		s.byID[id] = c
	}
	for _, c := range s.txs {
		if c.acked || c.next > s.now {
			continue
		}
		c.next = s.now + 3000
		n := s.nodes[1+s.rng.IntN(nNodes)]
		if !n.up {
			s.ev("submit %s to n%d: down", c.id, n.id)
			continue
		}
		if !s.leader(n) {
			// A follower forwards to the leader it knows (node/orderer).
			l := n.st.Status().Leader
			if l == 0 || l > nNodes || !s.nodes[l].up || !s.leader(s.nodes[l]) || s.cut[n.id][l] {
				s.ev("submit %s to n%d: no leader (%d)", c.id, n.id, l)
				continue
			}
			n = s.nodes[l]
		}
		s.ev("submit %s to n%d", c.id, n.id)
		batches, _ := n.cutter.Ordered(c.env, s.vtime())
		for _, b := range batches {
			s.propose(n, b)
		}
	}
}

// fault: one of crash (a restart follows), partition of one node (healed
// later), clock jump.
func (s *sim) fault() {
	i := 1 + s.rng.IntN(nNodes)
	n := s.nodes[i]
	switch k := s.rng.IntN(11); {
	case k < 5:
		if !n.up {
			return
		}
		loss := s.rng.Float64() < s.p.powerLoss
		s.crash(n, loss)
		s.push(event{at: s.now + 200 + s.rng.Int64N(5000), kind: evRestart, node: i})
	case k < 8:
		for j := 1; j <= nNodes; j++ {
			if j != i {
				s.cut[i][j], s.cut[j][i] = true, true
			}
		}
		s.ev("partition n%d", i)
		s.push(event{at: s.now + 200 + s.rng.Int64N(6000), kind: evHeal, node: i})
	case k < 9:
		if n.up {
			k, op := 1+s.rng.IntN(8), ""
			switch s.rng.IntN(4) {
			case 0:
				k, op = 1, raftlog.CrashInstallRecord
			case 1:
				k, op = 1, raftlog.CrashSnapshotFile
			}
			n.st.CrashAt(k, op)
			s.ev("n%d crashes at its log write %d from now (%q)", i, k, op)
		}
	default:
		n.jumpLeft = 1 + s.rng.IntN(30)
		s.ev("clock jump n%d +%d ticks", i, n.jumpLeft)
	}
}

func (s *sim) crash(n *node, powerLoss bool) {
	keepFn := func(unsynced int64) (int64, int64) { return unsynced, 0 }
	if powerLoss {
		keepFn = func(unsynced int64) (int64, int64) {
			k := s.rng.Int64N(unsynced + 1)
			var z int64
			if s.rng.IntN(3) == 0 {
				z = s.rng.Int64N(unsynced - k + 1)
			}
			return k, z
		}
	}
	if err := n.st.Crash(keepFn); err != nil {
		s.violate("crash n%d: %v", n.id, err)
	}
	n.bs.Close()
	n.up, n.out, n.props = false, nil, nil
	s.ev("crash n%d power_loss=%v", n.id, powerLoss)
}

func (s *sim) restart(i int) {
	n := s.nodes[i]
	if n.up {
		return
	}
	if err := s.start(n); err != nil {
		if errors.Is(err, errNoSource) {
			// Behind its own snapshot (installed from a leader, then a
			// crash before the blocks came), with no live peer to fetch
			// them from: the real node's catch-up keeps trying; here the
			// start is tried again.
			s.ev("restart n%d waits for a peer: %v", i, err)
			s.push(event{at: s.now + 1000, kind: evRestart, node: i})
			return
		}
		s.violate("restart n%d: %v", i, err)
		return
	}
	s.ev("restart n%d height %d applied %d", i, n.bs.Height(), n.lastIdx)
	if i == s.victim {
		s.retireVictim()
	}
}

// heal ends node i's partition; node 0: the end of the fault phase (every
// node up, every link whole, no more loss).
func (s *sim) heal(i int) {
	if i != 0 {
		for j := 1; j <= nNodes; j++ {
			s.cut[i][j], s.cut[j][i] = false, false
		}
		s.ev("heal n%d", i)
		return
	}
	s.faults = false
	s.cut = [nNodes + 1][nNodes + 1]bool{}
	s.p.drop, s.p.dup = 0, 0
	s.ev("heal all")
	for j := 1; j <= nNodes; j++ {
		s.restart(j)
	}
}

// deliver hands a message to its target (if up).
func (s *sim) deliver(e event) {
	n := s.nodes[e.node]
	var m raftpb.Message
	if err := m.Unmarshal(e.raw); err != nil {
		s.violate("unmarshal: %v", err)
		return
	}
	sum := sha256.Sum256(e.raw)
	if !n.up {
		s.ev("lost %d->%d %s (down) %x", e.from, e.node, m.Type, sum[:8])
		if f := s.nodes[e.from]; m.Type == raftpb.MsgSnap && f.up {
			// The transport reports a snapshot it could not deliver (the
			// connection to a crashed node fails): raft would otherwise
			// wait for that follower's snapshot for ever.
			f.st.ReportSnapshot(uint64(e.node), raft.SnapshotFailure)
		}
		return
	}
	s.ev("deliver %d->%d %s term %d index %d %x", e.from, e.node, m.Type, m.Term, m.Index, sum[:8])
	if m.Type == raftpb.MsgSnap && m.Snapshot != nil {
		// What the recInstall record is for: a snapshot that replaces a
		// log holding another term at its index (replay cannot tell that
		// log's entries from the ones after the snapshot without it).
		md := m.Snapshot.Metadata
		s.snaps++
		if t, ok := n.st.LogTerm(md.Index); ok && t != md.Term {
			s.divergent++
			s.ev("n%d gets a snapshot at %d (term %d) over a log with term %d there", n.id, md.Index, md.Term, t)
		}
	}
	fromRemoved := s.victim != 0 && e.from == s.victim && s.appliedRemoval(n)
	var term, lead uint64
	if fromRemoved {
		term, lead = n.st.TermLead()
	}
	s.guard(n, func() error { return n.st.Step(m) })
	if !n.up {
		return
	}
	if fromRemoved {
		if t, _ := n.st.TermLead(); t > term {
			// Raft lets a candidate outside the configuration (its log as
			// up to date: it has the removal) win the vote of a node that
			// knows no leader or has not heard from it for an election
			// timeout (raft's lease; raftlog's transport keeps the inbound
			// connection of a removed peer): counted, bounded.
			s.victimRaises++
			s.ev("a %s (term %d) from removed n%d raised n%d's term from %d to %d (leader %d)", m.Type, m.Term, e.from, n.id, term, t, lead)
			if s.victimRaises > maxVictimRaises {
				s.violate("removed n%d raised the others' terms %d times (bound %d): a removed node disrupts the cluster", e.from, s.victimRaises, maxVictimRaises)
			}
		}
	}
	if m.Type == raftpb.MsgSnap {
		if f := s.nodes[e.from]; f.up {
			f.st.ReportSnapshot(uint64(e.node), raft.SnapshotFinish)
		}
	}
}

// process runs every live node's Ready handling until none has work, in
// node order, then routes what they sent and answers the clients.
func (s *sim) process() {
	for more := true; more; {
		more = false
		for i := 1; i <= nNodes; i++ {
			n := s.nodes[i]
			if !n.up {
				continue
			}
			rem := s.victim != 0 && n.id != s.victim && s.appliedRemoval(n)
			var did bool
			var err error
			if s.guard(n, func() error { did, err = n.st.Process(); return nil }) {
				continue
			}
			if err != nil {
				if errors.Is(err, raftlog.ErrCrashPoint) {
					s.ev("n%d reached its crash point: %v", i, err)
					s.crash(n, s.rng.Float64() < s.p.powerLoss)
					s.push(event{at: s.now + 200 + s.rng.Int64N(5000), kind: evRestart, node: i})
					continue
				}
				if errors.Is(err, errNoSource) {
					s.ev("n%d stopped: %v", i, err)
					s.crash(n, false)
					s.push(event{at: s.now + 1000, kind: evRestart, node: i})
					continue
				}
				s.violate("node %d: %v", i, err)
				s.crash(n, false)
				continue
			}
			more = more || did
			s.route(n, rem)
			s.acks(n)
		}
	}
}

// guard runs f on node n; a panic (raft's, on a log it finds broken) is
// a violation, and the node is taken down. It reports whether f panicked.
func (s *sim) guard(n *node, f func() error) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			s.violate("node %d panicked: %v", n.id, v)
			s.crash(n, false)
			panicked = true
		}
	}()
	f()
	return false
}

// route sends what node n's last Ready sent. rem: n had applied the
// victim's removal before that Ready (its messages were made after).
func (s *sim) route(n *node, rem bool) {
	out := n.out
	n.out = nil
	if n.id == s.victim && s.retire && s.removed && !n.st.Status().Removed {
		// Retired and not knowing its removal, it campaigns at most once
		// (after losing the leader it followed when retired).
		for _, m := range out {
			if m.Type == raftpb.MsgPreVote || m.Type == raftpb.MsgVote {
				if s.campaigns++; s.campaigns > 1 {
					s.violate("retired n%d campaigned again (%s term %d): %d campaigns since it was retired", n.id, m.Type, m.Term, s.campaigns)
				}
				break
			}
		}
	}
	for _, m := range out {
		raw, err := m.Marshal()
		if err != nil {
			s.violate("marshal: %v", err)
			continue
		}
		to := int(m.To)
		if to < 1 || to > nNodes {
			continue
		}
		if rem && to == s.victim {
			switch m.Type {
			case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap:
				s.violate("n%d sent %s (term %d index %d) to n%d after it applied n%d's removal", n.id, m.Type, m.Term, m.Index, to, to)
			}
		}
		if s.cut[n.id][to] || (s.faults && s.rng.Float64() < s.p.drop) {
			s.ev("drop %d->%d %s", n.id, to, m.Type)
			if m.Type == raftpb.MsgSnap {
				n.st.ReportSnapshot(m.To, raft.SnapshotFailure)
			}
			if !s.p.partitionSilent {
				n.st.ReportUnreachable(m.To)
			}
			continue
		}
		copies := 1
		if s.faults && s.rng.Float64() < s.p.dup {
			copies = 2
		}
		for range copies {
			d := int64(1)
			if s.p.reorder || copies > 1 {
				d += s.rng.Int64N(s.p.maxDelay)
			}
			s.push(event{at: s.now + d, kind: evDeliver, node: to, from: n.id, raw: raw})
		}
	}
}

// acks answers the clients of the proposals this node has applied.
func (s *sim) acks(n *node) {
	keep := n.props[:0]
	for _, p := range n.props {
		if _, ok := n.st.Applied(p.seq); ok {
			if s.plant != plantAckEarly {
				s.ack(n, p.txs)
			}
			continue
		}
		keep = append(keep, p)
	}
	n.props = keep
}

// appliedRemoval: node n's configuration no longer has the victim.
func (s *sim) appliedRemoval(n *node) bool {
	st := n.st.Status()
	return len(st.Voters) > 0 && !slices.Contains(st.Voters, uint64(s.victim))
}

// member proposes the victim's removal through the node that leads (as
// the application would, e.g. after a policy dropped the member), unless
// every other node has applied it, which it reports.
func (s *sim) member() bool {
	done := true
	for i := 1; i <= nNodes; i++ {
		if n := s.nodes[i]; i != s.victim && (!n.up || !s.appliedRemoval(n)) {
			done = false
		}
	}
	if st := s.removeSt; st != nil {
		if idx, ok := st.Applied(s.removeSeq); ok {
			s.ev("removal of n%d applied on its proposer (index %d)", s.victim, idx)
		}
		st.Forget(s.removeSeq)
		s.removeSt = nil
	}
	if done {
		s.removed = true
		s.ev("removal of n%d applied on every other node", s.victim)
		s.retireVictim()
		return true
	}
	for i := 1; i <= nNodes; i++ {
		if n := s.nodes[i]; n.up && s.leader(n) {
			seq, err := n.st.ChangeMembership(raftlog.MembershipChange{Remove: true, Peer: raftlog.Peer{ID: uint64(s.victim)}})
			s.ev("propose removal of n%d by n%d err=%v", s.victim, i, err)
			if err == nil {
				s.removeSeq, s.removeSt = seq, n.st
			}
			break
		}
	}
	return false
}

// retireVictim retires the removed node, if this seed does.
func (s *sim) retireVictim() {
	if v := s.nodes[s.victim]; s.retire && s.removed && v.up {
		v.st.Retire(true)
		s.campaigns = 0
		s.ev("retire n%d (leader %d)", v.id, v.st.Status().Leader)
	}
}

func (s *sim) settled() bool {
	for _, c := range s.txs {
		if !c.acked {
			return false
		}
	}
	if s.victim != 0 && !s.removed {
		return false
	}
	var h uint64
	for i := 1; i <= nNodes; i++ {
		if i != s.victim {
			h = s.nodes[i].bs.Height()
		}
	}
	for i := 1; i <= nNodes; i++ {
		if !s.nodes[i].up || (i != s.victim && s.nodes[i].bs.Height() != h) {
			return false
		}
	}
	return true
}

// finish checks the end state: every acked envelope in every chain, no tx
// twice, the chains identical and verified.
func (s *sim) finish() {
	if len(s.viol) > 0 {
		return
	}
	h := uint64(len(s.canon))
	if s.victim != 0 {
		if !s.removed {
			s.violate("the removal of n%d was never applied on every other node", s.victim)
		}
		if v := s.nodes[s.victim]; v.up {
			// A node down or cut off while the others commit its removal
			// never hears of it: they send it nothing once they applied
			// it. Recorded, not a violation (the application retires it).
			st := v.st.Status()
			s.ev("end: removed n%d Removed=%v Retired=%v term %d raised others' terms %d times", s.victim, st.Removed, st.Retired, st.Term, s.victimRaises)
			s.removedSeen = st.Removed
		}
	}
	for i := 1; i <= nNodes; i++ {
		n := s.nodes[i]
		if !n.up {
			s.violate("n%d is down at the end", i)
			continue
		}
		if i == s.victim {
			// Its chain is a prefix (checked at each store); it need not
			// have every block.
		} else if n.bs.Height() != h {
			s.violate("n%d has %d blocks at the end, the longest chain %d", i, n.bs.Height(), h)
		}
		seen := map[string]bool{}
		var prev *common.Block
		for k := uint64(0); k < n.bs.Height(); k++ {
			b, err := n.bs.Get(k)
			if err != nil {
				s.violate("n%d block %d: %v", i, k, err)
				break
			}
			if prev != nil {
				if err := block.Verify(b, prev); err != nil {
					s.violate("n%d block %d: %v", i, k, err)
				}
			}
			prev = b
			for _, env := range b.Data.Data {
				id := txID(env)
				if seen[id] {
					s.violate("n%d: %s twice in the chain (block %d)", i, id, k)
				}
				seen[id] = true
			}
		}
		for _, c := range s.txs {
			if i != s.victim && c.acked && !seen[c.id] {
				s.violate("n%d: %s was answered SUCCESS but is not in its chain", i, c.id)
			}
		}
	}
	unacked := 0
	for _, c := range s.txs {
		if !c.acked {
			unacked++
		}
	}
	if unacked > 0 {
		s.violate("%d of %d envelopes never answered SUCCESS after the faults ended (liveness)", unacked, len(s.txs))
	}
}

package raftlog

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/node/raftlog/raftlogtest"
)

// testApp is the application state of one node: the applied entries in
// order, with a hash chain standing in for the ledger's block hashes. It
// survives node restarts (like a block store) unless wiped.
type testApp struct {
	mu        sync.Mutex
	data      [][]byte
	chain     [32]byte
	lastIndex uint64
	snaps     int          // snapshots installed
	commits   atomic.Int64 // Apply calls with entries (read without mu: apply holds it while fetching)
	fetch     func(upTo int) [][]byte
}

func (a *testApp) apply(_ context.Context, c Commit) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.Snapshot != nil {
		a.snaps++
		count := int(binary.BigEndian.Uint64(c.Snapshot.Data[:8]))
		if count > len(a.data) {
			// "fetch the missing blocks from peers"
			missing := a.fetch(count)
			for _, d := range missing[len(a.data):count] {
				a.add(d)
			}
		}
		if a.chain != [32]byte(c.Snapshot.Data[8:40]) {
			return errors.New("state after snapshot does not match the snapshot's hash")
		}
		a.lastIndex = c.Snapshot.Index
	}
	if len(c.Entries) > 0 {
		a.commits.Add(1)
	}
	for _, e := range c.Entries {
		if e.Index <= a.lastIndex {
			return fmt.Errorf("entry %d applied twice or out of order (last %d)", e.Index, a.lastIndex)
		}
		a.add(append([]byte(nil), e.Data...))
		a.lastIndex = e.Index
	}
	return nil
}

func (a *testApp) add(d []byte) {
	a.data = append(a.data, d)
	a.chain = sha256.Sum256(append(a.chain[:], d...))
}

func (a *testApp) snapshot(uint64) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b := binary.BigEndian.AppendUint64(nil, uint64(len(a.data)))
	return append(b, a.chain[:]...), nil
}

func (a *testApp) copyData(upTo int) [][]byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if upTo > len(a.data) {
		upTo = len(a.data)
	}
	return append([][]byte(nil), a.data[:upTo]...)
}

func (a *testApp) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.data)
}

type testNode struct {
	id     uint64
	dir    string
	app    *testApp
	np     atomic.Pointer[Node]
	cancel context.CancelFunc
	runErr chan error
}

type cluster struct {
	t     testing.TB
	size  int
	net   *raftlogtest.Network
	nodes map[uint64]*testNode
	tune  func(*Config)
	// tuneNode, if set, adjusts node id between New and Run.
	tuneNode func(id uint64, n *Node)
}

func newCluster(t testing.TB, size int, tune func(*Config)) *cluster {
	return newClusterWith(t, size, tune, nil)
}

// newClusterWith is newCluster with tuneNode (cluster.tuneNode).
func newClusterWith(t testing.TB, size int, tune func(*Config), tuneNode func(id uint64, n *Node)) *cluster {
	c := &cluster{t: t, size: size, net: raftlogtest.NewNetwork(), nodes: map[uint64]*testNode{}, tune: tune, tuneNode: tuneNode}
	base := t.TempDir()
	for i := 1; i <= size; i++ {
		id := uint64(i)
		tn := &testNode{id: id, dir: filepath.Join(base, fmt.Sprintf("n%d", i)), app: &testApp{}}
		tn.app.fetch = c.fetchFrom(id)
		c.nodes[id] = tn
	}
	for id := range c.nodes {
		c.start(id)
	}
	t.Cleanup(func() {
		for id := range c.nodes {
			c.stop(id)
		}
	})
	return c
}

func (c *cluster) fetchFrom(self uint64) func(int) [][]byte {
	return func(upTo int) [][]byte {
		for id, tn := range c.nodes {
			if id != self && tn.app.count() >= upTo {
				return tn.app.copyData(upTo)
			}
		}
		return nil
	}
}

func testLogger(t testing.TB, id uint64) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("test_node", id)
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (c *cluster) start(id uint64) {
	c.t.Helper()
	tn := c.nodes[id]
	ln, err := c.net.Listen(fmt.Sprintf("n%d", id))
	if err != nil {
		c.t.Fatal(err)
	}
	var peers []Peer
	for i := 1; i <= c.size; i++ {
		peers = append(peers, Peer{ID: uint64(i), Addr: fmt.Sprintf("n%d", i), Name: fmt.Sprintf("m%d", i)})
	}
	tn.app.mu.Lock()
	applied := tn.app.lastIndex
	tn.app.mu.Unlock()
	cfg := Config{
		ID: id, Cluster: "test-channel", Peers: peers, Dir: tn.dir,
		Dialer: c.net.Dialer(fmt.Sprintf("n%d", id)), Listener: ln,
		TickInterval: 20 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
		Applied: applied, Apply: tn.app.apply, SnapshotData: tn.app.snapshot,
		Logger: testLogger(c.t, id),
	}
	if c.tune != nil {
		c.tune(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		ln.Close()
		c.t.Fatalf("start node %d: %v", id, err)
	}
	if c.tuneNode != nil {
		c.tuneNode(id, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn.np.Store(n)
	tn.cancel, tn.runErr = cancel, make(chan error, 1)
	go func() { tn.runErr <- n.Run(ctx) }()
}

func (c *cluster) stop(id uint64) {
	tn := c.nodes[id]
	n := tn.np.Load()
	if n == nil {
		return
	}
	tn.cancel()
	if err := <-tn.runErr; err != nil {
		c.t.Errorf("node %d Run: %v", id, err)
	}
	if err := n.Close(); err != nil {
		c.t.Errorf("node %d Close: %v", id, err)
	}
	tn.np.Store(nil)
}

// leader waits until the running nodes agree on a leader.
func (c *cluster) leader(timeout time.Duration) uint64 {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var lead uint64
		agree := true
		for _, tn := range c.nodes {
			if tn.node() == nil {
				continue
			}
			l := tn.node().Leader()
			if l == 0 || (lead != 0 && l != lead) {
				agree = false
				break
			}
			lead = l
		}
		if agree && lead != 0 && c.nodes[lead].node() != nil {
			return lead
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no leader within %v", timeout)
	return 0
}

// waitApplied waits until every running node applied at least want entries.
func (c *cluster) waitApplied(want int, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		var got []string
		for id, tn := range c.nodes {
			n := tn.app.count()
			got = append(got, fmt.Sprintf("n%d=%d", id, n))
			if n < want {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("nodes did not apply %d entries within %v: %s", want, timeout, strings.Join(got, " "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkIdentical asserts every node applied the same sequence, after
// waiting (bounded) for retried proposals still in flight to settle.
func (c *cluster) checkIdentical() [][]byte {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		counts := map[int]bool{}
		for _, tn := range c.nodes {
			counts[tn.app.count()] = true
		}
		if len(counts) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var ref [][]byte
	var refID uint64
	for id, tn := range c.nodes {
		d := tn.app.copyData(1 << 62)
		if ref == nil {
			ref, refID = d, id
			continue
		}
		if len(d) != len(ref) {
			c.t.Fatalf("node %d applied %d entries, node %d applied %d", id, len(d), refID, len(ref))
		}
		for i := range d {
			if string(d[i]) != string(ref[i]) {
				c.t.Fatalf("entry %d differs between node %d and node %d", i, id, refID)
			}
		}
	}
	return ref
}

type dummyListener struct{ net.Listener }

func (tn *testNode) node() *Node { return tn.np.Load() }

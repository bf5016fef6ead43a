package raftlog

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/node/raftlog/raftlogtest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchChildEnv) != "" {
		benchChild() // follower process for BenchmarkReplicate
	}
	goleak.VerifyTestMain(m)
}

// propose runs workers that ProposeWait payloads "w<worker>-<i>" through
// whichever node is running (round robin), retrying on error, and returns
// the confirmed payloads.
func (c *cluster) propose(ctx context.Context, tag string, workers, total int, onProgress func(done int)) map[string]bool {
	var mu sync.Mutex
	confirmed := map[string]bool{}
	var done atomic.Int64
	var wg sync.WaitGroup
	per := total / workers
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := per
			if w < total%workers {
				mine++
			}
			for i := 0; i < mine; i++ {
				payload := fmt.Sprintf("%s-w%d-%d", tag, w, i)
				for attempt := 0; ; attempt++ {
					if ctx.Err() != nil {
						return
					}
					tn := c.nodes[uint64(1+(w+attempt)%c.size)]
					var n *Node
					if tn != nil { // nil: removed from the cluster
						n = tn.node()
					}
					if n == nil {
						time.Sleep(5 * time.Millisecond)
						continue
					}
					pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					_, err := n.ProposeWait(pctx, []byte(payload))
					cancel()
					if err == nil {
						mu.Lock()
						confirmed[payload] = true
						mu.Unlock()
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				d := int(done.Add(1))
				if onProgress != nil {
					onProgress(d)
				}
			}
		}()
	}
	wg.Wait()
	return confirmed
}

func countOf(log [][]byte) map[string]int {
	m := map[string]int{}
	for _, d := range log {
		m[string(d)]++
	}
	return m
}

func TestClusterReplicatesIdenticalLog(t *testing.T) {
	total := 10000
	if testing.Short() {
		total = 400
	}
	c := newCluster(t, 3, nil)
	c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	confirmed := c.propose(ctx, "a", 8, total, nil)
	if len(confirmed) != total {
		t.Fatalf("confirmed %d of %d proposals", len(confirmed), total)
	}
	c.waitApplied(total, 30*time.Second)
	log := c.checkIdentical()
	counts := countOf(log)
	for p := range confirmed {
		if counts[p] == 0 {
			t.Fatalf("confirmed payload %q missing from the log", p)
		}
	}
	for _, tn := range c.nodes {
		st := tn.node().Status()
		if st.Leader == 0 || st.Applied == 0 || len(st.Voters) != 3 {
			t.Errorf("node %d status %+v", tn.id, st)
		}
	}
}

func TestLeaderKilledMidLoad(t *testing.T) {
	total := 10000
	if testing.Short() {
		total = 400
	}
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 500; cfg.CatchUpEntries = 100 })
	old := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var killed atomic.Bool
	killDone := make(chan struct{})
	confirmed := c.propose(ctx, "a", 8, total, func(done int) {
		if done == total/2 && killed.CompareAndSwap(false, true) {
			go func() {
				defer close(killDone)
				c.stop(old)
			}()
		}
	})
	<-killDone
	if len(confirmed) != total {
		t.Fatalf("confirmed %d of %d proposals", len(confirmed), total)
	}
	lead := c.leader(10 * time.Second)
	if lead == old {
		t.Fatalf("leader is still the stopped node %d", old)
	}
	// The old leader comes back from its directory and catches up.
	c.start(old)
	c.waitApplied(total, time.Minute)
	log := c.checkIdentical()
	counts := countOf(log)
	for p := range confirmed {
		if counts[p] == 0 {
			t.Fatalf("payload %q was confirmed committed but is missing after the leader change", p)
		}
	}
	t.Logf("log has %d entries for %d payloads (retried proposals may commit twice); old leader %d, new leader %d", len(log), total, old, lead)
}

func TestRestartedNodeCatchesUpThroughSnapshot(t *testing.T) {
	total := 2000
	if testing.Short() {
		total = 300
	}
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 50; cfg.CatchUpEntries = 10 })
	lead := c.leader(10 * time.Second)
	follower := uint64(1)
	if follower == lead {
		follower = 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.propose(ctx, "a", 4, total/4, nil)
	c.waitApplied(total/4, 30*time.Second)
	c.stop(follower)
	c.propose(ctx, "b", 4, total/2, nil)
	// Restart from its own directory (which has its own snapshots) ...
	c.start(follower)
	c.waitApplied(total/4+total/2, 30*time.Second)
	c.checkIdentical()
	if s := c.nodes[follower].app.snaps; s == 0 {
		t.Errorf("follower %d caught up without installing a snapshot; expected one after compaction", follower)
	}
	// ... and once more with its application state lost: the local snapshot
	// is handed to the app first, which fetches what it lacks.
	c.stop(follower)
	c.propose(ctx, "c", 4, total/4, nil)
	c.nodes[follower].app = &testApp{fetch: c.fetchFrom(follower)}
	c.start(follower)
	c.waitApplied(total, 30*time.Second)
	c.checkIdentical()
	if st := c.nodes[follower].node().Status(); st.SnapshotIndex == 0 {
		t.Errorf("follower status shows no snapshot: %+v", st)
	}
}

func TestProposeErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newCluster(t, 1, func(cfg *Config) { cfg.MaxEntryBytes = 1000; cfg.Registerer = reg })
	c.leader(10 * time.Second)
	n := c.nodes[1].node()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			series[mf.GetName()] += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if series["raft_is_leader"] != 1 || series["raft_term"] == 0 || len(series) != 15 {
		t.Errorf("metrics: %v", series)
	}
	if err := n.Propose(context.Background(), make([]byte, 1001)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize proposal: err = %v, want ErrTooLarge", err)
	}
	idx, err := n.ProposeWait(context.Background(), []byte("x"))
	if err != nil || idx == 0 {
		t.Fatalf("ProposeWait = %d, %v", idx, err)
	}
	c.stop(1)
	if err := n.Propose(context.Background(), []byte("y")); !errors.Is(err, ErrClosed) {
		t.Errorf("Propose after Close: err = %v, want ErrClosed", err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{ID: 1, Cluster: "c", Dir: "d", Dialer: &net.Dialer{}, Listener: dummyListener{},
		Apply: func(context.Context, Commit) error { return nil }, Peers: []Peer{{ID: 1}, {ID: 2, Addr: "x"}}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"no id":         func(c *Config) { c.ID = 0 },
		"no cluster":    func(c *Config) { c.Cluster = "" },
		"no dir":        func(c *Config) { c.Dir = "" },
		"no dialer":     func(c *Config) { c.Dialer = nil },
		"no listener":   func(c *Config) { c.Listener = nil },
		"no apply":      func(c *Config) { c.Apply = nil },
		"self missing":  func(c *Config) { c.Peers = c.Peers[1:] },
		"dup peer":      func(c *Config) { c.Peers = append(c.Peers, Peer{ID: 2, Addr: "y"}) },
		"no addr":       func(c *Config) { c.Peers[1].Addr = "" },
		"election<=hb":  func(c *Config) { c.ElectionTicks, c.HeartbeatTicks = 2, 2 },
		"negative size": func(c *Config) { c.SendQueue = -1 },
		"inflight<msg":  func(c *Config) { c.MaxSizePerMsg, c.MaxInflightBytes = 1<<20, 1<<19 },
	} {
		c := ok
		c.Peers = append([]Peer(nil), ok.Peers...)
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", name, err)
		}
	}
}

// TestNodeRecoversFromTornWAL: a follower's newest segment loses its last
// bytes (crash during a write); it restarts, keeps the earlier records and
// catches up from the leader.
func TestNodeRecoversFromTornWAL(t *testing.T) {
	c := newCluster(t, 3, nil)
	lead := c.leader(10 * time.Second)
	follower := uint64(1)
	if follower == lead {
		follower = 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.propose(ctx, "a", 4, 100, nil)
	c.waitApplied(100, 30*time.Second)
	c.stop(follower)
	seg := lastSegmentOf(t, c.nodes[follower].dir)
	st, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(seg, st.Size()-7); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(make([]byte, 512)) // zero-filled block after the torn record
	f.Close()
	c.start(follower)
	c.propose(ctx, "b", 4, 100, nil)
	c.waitApplied(200, 30*time.Second)
	c.checkIdentical()
}

// TestLeaderPartitioned: the leader is cut off (still running); the others
// elect a new leader and keep committing; after the partition heals the old
// leader steps down and converges. Entries confirmed on either side are kept.
func TestLeaderPartitioned(t *testing.T) {
	var changes atomic.Int32
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.OnLeaderChange = func(leader, term uint64) {
			if leader != 0 && term == 0 {
				t.Errorf("leader %d with term 0", leader)
			}
			changes.Add(1)
		}
	})
	old := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	confirmed := c.propose(ctx, "a", 4, 100, nil)
	before := changes.Load()
	c.net.Partition(fmt.Sprintf("n%d", old))
	// The isolated leader cannot commit: ProposeWait there must not succeed.
	pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if _, err := c.nodes[old].node().ProposeWait(pctx, []byte("isolated")); err == nil {
		t.Fatal("an isolated leader confirmed a proposal")
	}
	pcancel()
	var lead uint64
	deadline := time.Now().Add(10 * time.Second)
	for lead == 0 || lead == old {
		if time.Now().After(deadline) {
			t.Fatal("no new leader on the majority side")
		}
		for id, tn := range c.nodes {
			if id != old && tn.node().Leader() != 0 && tn.node().Leader() != old {
				lead = tn.node().Leader()
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 50; i++ {
		p := fmt.Sprintf("b-%d", i)
		if _, err := c.nodes[lead].node().ProposeWait(ctx, []byte(p)); err != nil {
			t.Fatalf("majority side: %v", err)
		}
		confirmed[p] = true
	}
	c.net.Heal(fmt.Sprintf("n%d", old))
	c.waitApplied(150, 30*time.Second)
	log := c.checkIdentical()
	counts := countOf(log)
	for p := range confirmed {
		if counts[p] == 0 {
			t.Fatalf("confirmed payload %q missing", p)
		}
	}
	if l := c.leader(10 * time.Second); l == 0 {
		t.Fatal("no leader after heal")
	}
	if changes.Load() <= before {
		t.Error("OnLeaderChange not called for the new leader")
	}
}

// TestStalledPeerDoesNotBlock: node 3 accepts the connection and the
// handshake, then never reads. The other two keep committing (the test
// fails on its context deadline if the leader's loop blocks on node 3).
func TestStalledPeerDoesNotBlock(t *testing.T) {
	entries, size := 400, 16<<10
	if testing.Short() {
		entries = 200
	}
	c := newCluster(t, 3, func(cfg *Config) { cfg.SendQueue = 8; cfg.WriteTimeout = time.Minute })
	c.stop(3)
	ln, err := c.net.Listen("n3")
	if err != nil {
		t.Fatal(err)
	}
	stalled := make(chan net.Conn, 8)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				close(stalled)
				return
			}
			fr := frameReader{r: conn, max: 4096}
			if _, p, err := fr.next(); err == nil {
				h, _ := parseHello(p)
				conn.Write(appendFrame(nil, frameHello, hello{From: 3, To: h.From, Cluster: h.Cluster}.marshal()))
			}
			stalled <- conn // never read again
		}
	}()
	defer func() {
		ln.Close()
		for conn := range stalled {
			conn.Close()
		}
	}()
	lead := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	payload := make([]byte, size)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < entries/8; i++ {
				if _, err := c.nodes[lead].node().ProposeWait(ctx, payload); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := c.nodes[lead].node().Status()
	t.Logf("%d entries of %d KiB in %v with node 3 stalled; leader transport %+v", entries, size>>10, time.Since(start), st.Transport)
	// raft's own flow control (MaxInflightMsgs, probing) keeps most traffic
	// away from a peer that never acknowledges; the queue bound is tested in
	// TestSendQueueBound.
}

// TestApplyErrorStopsNode: an Apply error is fatal; Run returns it and
// waiting proposers get ErrClosed.
func TestApplyErrorStopsNode(t *testing.T) {
	nw := raftlogtest.NewNetwork()
	ln, err := nw.Listen("n1")
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("block store full")
	n, err := New(Config{ID: 1, Cluster: "c", Peers: []Peer{{ID: 1}}, Dir: t.TempDir(),
		Dialer: nw.Dialer("n1"), Listener: ln, TickInterval: 10 * time.Millisecond,
		Apply: func(_ context.Context, c Commit) error {
			if len(c.Entries) > 0 {
				return boom
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	done := make(chan error, 1)
	go func() { done <- n.Run(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.ProposeWait(ctx, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("ProposeWait = %v, want ErrClosed", err)
	}
	if err := <-done; !errors.Is(err, boom) {
		t.Errorf("Run = %v, want the Apply error", err)
	}
}

// TestLeaderLostAt: a follower whose leader dies says so in LeaderLostAt
// from the moment Leader reads 0 (the ordering node bounds its wait for an
// election by it; OnLeaderChange comes only after the Ready's fsync). The
// third node is stopped too, so no new leader can follow at once.
func TestLeaderLostAt(t *testing.T) {
	c := newCluster(t, 3, nil)
	l := c.leader(10 * time.Second)
	fid := l%3 + 1
	f := c.nodes[fid].node()
	if at := f.LeaderLostAt(); !at.IsZero() {
		t.Fatalf("LeaderLostAt %v before any leader was lost", at)
	}
	c.stop(6 - l - fid)
	stopped := time.Now()
	c.stop(l)
	deadline := time.Now().Add(10 * time.Second)
	for f.Leader() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node %d still follows leader %d 10s after it was stopped", fid, f.Leader())
		}
		time.Sleep(time.Millisecond)
	}
	at := f.LeaderLostAt()
	if at.IsZero() {
		t.Fatalf("node %d knows no leader but LeaderLostAt is zero", fid)
	}
	if at.Before(stopped) || at.After(time.Now()) {
		t.Fatalf("LeaderLostAt %v outside [%v, now]", at, stopped)
	}
}

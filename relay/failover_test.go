package relay

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// raftElectionTimeout is what a relay failover must stay well under: the
// ledger's raft runs with node/raftlog's defaults (TickInterval 100ms ×
// ElectionTicks 10 = 1s, the leader's CheckQuorum window; followers time
// out after 1–2s), which cmd/memberd/app does not override.
const raftElectionTimeout = time.Second

// flow streams numbered packets from one client to another every 2ms and
// records when each arrives.
type flow struct {
	sent atomic.Int64
	stop chan struct{}
	wg   sync.WaitGroup

	mu  sync.Mutex
	at  []time.Time // arrival times, in order (copies included)
	seq map[int]bool
}

func startFlow(t *testing.T, from, to *Client, toID string) *flow {
	f := &flow{stop: make(chan struct{}), seq: map[int]bool{}}
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		tickUntil(f.stop, 2*time.Millisecond, func(i int) {
			_ = from.WritePacket([]byte("seq-"+strconv.Itoa(i)), toID)
			f.sent.Store(int64(i + 1))
		})
	}()
	go func() {
		defer f.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, _, err := to.ReadPacket(buf)
			if err != nil {
				return // closed at cleanup
			}
			i, err := strconv.Atoi(strings.TrimPrefix(string(buf[:n]), "seq-"))
			if err != nil {
				continue
			}
			f.mu.Lock()
			f.at = append(f.at, time.Now())
			f.seq[i] = true
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() { f.halt() })
	return f
}

func (f *flow) halt() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
}

func (f *flow) arrivedAfter(t0 time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.at) - sortSearchTime(f.at, t0)
}

func sortSearchTime(at []time.Time, t0 time.Time) int {
	i, _ := slices.BinarySearchFunc(at, t0, func(a, b time.Time) int { return a.Compare(b) })
	return i
}

// gap is the longest time without an arrival from the last one before t0
// on.
func (f *flow) gap(t0 time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := sortSearchTime(f.at, t0)
	prev := t0
	if i > 0 {
		prev = f.at[i-1]
	}
	var g time.Duration
	for _, a := range f.at[i:] {
		g = max(g, a.Sub(prev))
		prev = a
	}
	return g
}

// settle waits up to 2s for the packets numbered from..to-1 still in
// flight to arrive (a busy host delays them).
func (f *flow) settle(from, to int) {
	for end := time.Now().Add(2 * time.Second); f.lost(from, to) > 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
}

// lost counts the packets numbered from..to-1 that never arrived.
func (f *flow) lost(from, to int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for i := from; i < to; i++ {
		if !f.seq[i] {
			n++
		}
	}
	return n
}

// twoRelays starts relay-1 and relay-2 and two members connected to both,
// and waits until both relays are healthy for both.
func twoRelays(t *testing.T, noQUIC bool) (n *testNet, r1 *testRelay, a, b *Client) {
	return twoRelaysWith(t, noQUIC, nil)
}

// twoRelaysWith is twoRelays with bank-a's client configured by tweakA.
func twoRelaysWith(t *testing.T, noQUIC bool, tweakA func(*ClientConfig)) (n *testNet, r1 *testRelay, a, b *Client) {
	n = newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	if noQUIC {
		n.noQUIC = map[string]bool{"relay-1": true, "relay-2": true}
	}
	r1 = n.startRelay("relay-1", nil)
	n.startRelay("relay-2", nil)
	a, b = n.member("bank-a", tweakA), n.member("bank-b", nil)
	waitReady(t, a, b)
	waitFor(t, 10*time.Second, "both relays healthy for both members", func() bool {
		for _, c := range []*Client{a, b} {
			for _, s := range c.Status() {
				if !s.Healthy {
					return false
				}
			}
		}
		return true
	})
	return n, r1, a, b
}

// A relay that dies abruptly while its members reach it over QUIC gives
// them no error, only silence. The sender must start copying packets to
// the other relay once the active one has been quiet for SuspectAfter
// (150ms), long before DeadAfter (1.2s) declares it dead, and resend what
// relay-1 may have swallowed: the flow's gap stays well under raft's
// election timeout and no packet is lost.
func TestRelayCrashOverQUICCopiesToTheOtherRelay(t *testing.T) {
	_, r1, a, b := twoRelays(t, false)
	f := startFlow(t, a, b, "bank-b")
	waitFor(t, 5*time.Second, "the flow", func() bool { return f.arrivedAfter(time.Time{}) > 50 })
	if s := a.Status(); !s[0].Active {
		t.Fatalf("relay-1 should be active before the crash: %s", fmtStatus(s))
	}

	// Watch the sender's view: when relay-2 becomes a backup, relay-1 must
	// still be within DeadAfter (the copy, not the dead-relay rule, moved
	// the traffic).
	var backupAt atomic.Int64
	var primaryHealthy atomic.Bool
	watch := make(chan struct{})
	go func() {
		defer close(watch)
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
			if s := a.Status(); s[1].Backup {
				backupAt.Store(time.Now().UnixNano())
				primaryHealthy.Store(s[0].Healthy && s[0].Active)
				return
			}
		}
	}()
	copies0 := a.copies.Load()
	seq0 := int(f.sent.Load())
	t0 := time.Now()
	r1.Crash()
	waitFor(t, 5*time.Second, "packets after the crash", func() bool { return f.arrivedAfter(t0) > 200 })
	<-watch
	seq1 := int(f.sent.Load())
	f.halt()
	f.settle(seq0, seq1)

	gap := f.gap(t0)
	copies := a.copies.Load() - copies0
	t.Logf("relay-1 crashed: longest gap in the 2ms flow %v; %d of %d packets sent since lost; relay-2 a backup %v after the crash; %d copies; sender %s",
		gap.Round(time.Millisecond), f.lost(seq0, seq1), seq1-seq0, time.Duration(backupAt.Load()-t0.UnixNano()).Round(time.Millisecond), copies, fmtStatus(a.Status()))
	if backupAt.Load() == 0 {
		t.Fatal("relay-2 never became a backup after relay-1 crashed")
	}
	if !primaryHealthy.Load() {
		t.Error("relay-2 became a backup only after relay-1 was declared dead: the copy did not move the traffic")
	}
	if copies == 0 {
		t.Error("no packet was copied to relay-2")
	}
	if lost := f.lost(seq0, seq1); lost > 0 {
		t.Errorf("%d packets lost: those relay-1 swallowed were not resent through relay-2", lost)
	}
	if gap >= raftElectionTimeout/2 {
		t.Errorf("gap %v, want well under raft's election timeout %v", gap, raftElectionTimeout)
	}
}

// Over TCP the kernel closes a crashed relay's connections, so the sender
// learns at once: the traffic moves on the error, not on a timer, and
// what the dead connection took last is resent through relay-2.
func TestRelayCrashOverTCPSwitchesOnTheError(t *testing.T) {
	_, r1, a, b := twoRelays(t, true)
	if p := a.Status()[0].Path; p != PathTCP {
		t.Fatalf("relay-1 path %q, want tcp", p)
	}
	f := startFlow(t, a, b, "bank-b")
	waitFor(t, 5*time.Second, "the flow", func() bool { return f.arrivedAfter(time.Time{}) > 50 })
	seq0 := int(f.sent.Load())
	t0 := time.Now()
	r1.Crash()
	waitFor(t, 5*time.Second, "relay-1 seen down by the sender", func() bool { return a.Status()[0].State == "down" })
	down := time.Since(t0)
	waitFor(t, 5*time.Second, "packets after the crash", func() bool { return f.arrivedAfter(t0) > 200 })
	seq1 := int(f.sent.Load())
	f.halt()
	f.settle(seq0, seq1)

	gap := f.gap(t0)
	s := a.Status()
	t.Logf("relay-1 crashed: sender saw it down after %v (%q); longest gap in the 2ms flow %v; %d of %d packets lost; sender %s",
		down.Round(time.Millisecond), s[0].LastClose, gap.Round(time.Millisecond), f.lost(seq0, seq1), seq1-seq0, fmtStatus(s))
	if down >= a.cfg.DeadAfter {
		t.Errorf("relay-1 seen down after %v: by the silence timer (DeadAfter %v), not on the connection error", down, a.cfg.DeadAfter)
	}
	if s[0].LastClose == "" {
		t.Error("relay-1's connection ended without an error recorded")
	}
	if !s[1].Active {
		t.Errorf("relay-2 not active: %s", fmtStatus(s))
	}
	if lost := f.lost(seq0, seq1); lost > 0 {
		t.Errorf("%d packets lost: those relay-1's connection took last were not resent through relay-2", lost)
	}
	if gap >= raftElectionTimeout/2 {
		t.Errorf("gap %v, want well under raft's election timeout %v", gap, raftElectionTimeout)
	}
}

// A relay back from a restart gets the traffic back only once its new
// connection has lasted FailBackAfter: a relay in a crash loop does not
// pull the traffic onto itself at every restart.
func TestFailBackWaitsForTheRestartedRelay(t *testing.T) {
	const failBack = 1500 * time.Millisecond
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	r1 := n.startRelay("relay-1", nil)
	n.startRelay("relay-2", nil)
	a := n.member("bank-a", func(c *ClientConfig) {
		c.FailBackAfter = failBack
		c.PingInterval, c.SuspectAfter, c.DeadAfter = 25*time.Millisecond, 100*time.Millisecond, 200*time.Millisecond
	})
	waitReady(t, a)
	waitFor(t, 10*time.Second, "bank-a on relay-1 with relay-2 healthy", func() bool {
		s := a.Status()
		return s[0].Active && s[1].Healthy
	})
	r1.Stop()
	waitFor(t, 5*time.Second, "bank-a on relay-2", func() bool { return a.Status()[1].Active })
	n.startRelay("relay-1", nil)
	var up time.Time
	waitFor(t, 10*time.Second, "bank-a reconnected to relay-1", func() bool {
		s := a.Status()[0]
		up = s.Since
		return s.State == "up" && s.Healthy
	})
	// The client counts FailBackAfter from the link's start, a moment
	// before Status's Since (set once the link is registered): allow that.
	const slack = 50 * time.Millisecond
	if s := a.Status(); time.Since(up) < failBack-slack && s[0].Active {
		t.Fatalf("relay-1 active %v after it reconnected, before FailBackAfter %v: %s", time.Since(up), failBack, fmtStatus(s))
	}
	waitFor(t, 10*time.Second, "bank-a back on relay-1", func() bool { return a.Status()[0].Active })
	if back := time.Since(up); back < failBack-slack {
		t.Fatalf("back on relay-1 %v after it reconnected, want at least FailBackAfter %v", back, failBack)
	}
	t.Logf("back on relay-1 %v after it reconnected (FailBackAfter %v)", time.Since(up).Round(time.Millisecond), failBack)
}

// TestSilentUDPDropMovesToTCPFast: a firewall starts dropping UDP without a
// word, established QUIC flows too (the relay's UDP socket goes away: on
// loopback quic-go sees no error). The clients must move to TLS over TCP
// on the same relay after about DeadAfter/2 (TCP dialled beside the
// silent QUIC link), not after the pinger gives up (4×DeadAfter) and a
// redial tries QUIC first: ~6 s before. Packets flow again over TCP.
func TestSilentUDPDropMovesToTCPFast(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	a, b := n.member("bank-a", nil), n.member("bank-b", nil)
	_, rb := readAll(a), readAll(b)
	waitReady(t, a, b)
	for _, c := range []*Client{a, b} {
		waitFor(t, 5*time.Second, "QUIC first", func() bool { return c.Status()[0].Path == PathQUIC })
	}
	deliver(t, a, "bank-b", rb, "bank-a", "over-quic", 5*time.Second)
	t0 := time.Now()
	r.StopQUIC()
	var took []time.Duration
	for _, c := range []*Client{a, b} {
		waitFor(t, 10*time.Second, "the move to TCP", func() bool {
			s := c.Status()[0]
			return s.Path == PathTCP && s.State == "up"
		})
		took = append(took, time.Since(t0))
	}
	deliver(t, a, "bank-b", rb, "bank-a", "over-tcp", 5*time.Second)
	if u := a.Status()[0].Upgrades; u != 0 {
		t.Errorf("the move down to TCP counted as %d upgrade(s) (moves back to QUIC)", u)
	}
	t.Logf("on TCP %v and %v after UDP went silent (DeadAfter %v; the pinger gives up at %v)", took[0].Round(time.Millisecond), took[1].Round(time.Millisecond),
		1200*time.Millisecond, 4*1200*time.Millisecond)
	// Generous for a loaded machine, yet below what giving up and
	// redialling took (4×DeadAfter + QUICTimeout).
	if limit := 4 * time.Second; took[1] > limit {
		t.Errorf("the clients moved to TCP %v after UDP went silent, want under %v", took[1], limit)
	}
}

// A relay crashing (kill -9 over QUIC) under bulk traffic: bank-a sends
// full-size packets at ~12 MB/s beside a small numbered packet every
// 2 ms (raft heartbeats, TCP acknowledgements). Before it suspects
// relay-1 (SuspectAfter, 150 ms) it puts ~1,500 full-size frames into it;
// the small packets among them must still be resent through relay-2
// (a lost one costs the tunnel's TCP a retransmission timeout, 200 ms or
// more). With one ring of 256 frames for all, the bulk pushed them out.
func TestRelayCrashUnderBulkResendsSmallPackets(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	unlimited := func(c *ServerConfig) { c.RateBytesPerSec = -1 }
	r1 := n.startRelay("relay-1", unlimited)
	n.startRelay("relay-2", unlimited)
	a, b := n.member("bank-a", nil), n.member("bank-b", nil)
	waitReady(t, a, b)
	waitFor(t, 10*time.Second, "both relays healthy for bank-a", func() bool {
		s := a.Status()
		return s[0].Healthy && s[1].Healthy && s[0].Active
	})
	f := startFlow(t, a, b, "bank-b")
	stop := make(chan struct{})
	var bulkWG sync.WaitGroup
	bulkWG.Add(1)
	go func() {
		defer bulkWG.Done()
		big := make([]byte, 1200)
		tickUntil(stop, time.Millisecond, func(int) {
			for range 10 {
				_ = a.WritePacket(big, "bank-b")
			}
		})
	}()
	defer func() { close(stop); bulkWG.Wait() }()
	waitFor(t, 5*time.Second, "the flow", func() bool { return f.arrivedAfter(time.Time{}) > 100 })
	time.Sleep(300 * time.Millisecond)
	seq0 := int(f.sent.Load())
	t0 := time.Now()
	r1.Crash()
	// 500 ms of small packets (resends arriving as duplicates must not
	// end the window early): the crash, the 150 ms before bank-a suspects
	// relay-1, and well after.
	seq1 := seq0 + 250
	waitFor(t, 10*time.Second, "small packets sent after the crash", func() bool { return int(f.sent.Load()) >= seq1 })
	f.halt()
	f.settle(seq0, seq1)
	lost := f.lost(seq0, seq1)
	t.Logf("relay-1 crashed under bulk: %d of %d small packets sent since lost; longest gap %v; drops bank-a %v bank-b %v relay-2 %v",
		lost, seq1-seq0, f.gap(t0).Round(time.Millisecond), a.Drops(), b.Drops(), n.relays["relay-2"].srv.Drops())
	if lost > 0 {
		t.Errorf("%d small packets lost across the crash: sent into relay-1 and not resent through relay-2", lost)
	}
}

package main

// `soak consensus` (make bench-consensus, issue #15 "consensus traffic
// first"): the real binary as users deploy it (`memberd demo init`: 2
// relays, 3 appliances, raft over the WireGuard tunnel and the relays)
// with a saturating bulk TCP transfer between two members through the
// tunnel, measuring what the raft group sees, with the prioritisation and
// without it (MEMBERD_DIAG_NO_PRIORITY=1 on every process: no raft
// priority lane, no small-frame priority on the relay links), alternated
// in the same run, a fresh consortium for each run.
//
// The bulk transfer: every appliance exposes a TCP sink (run by this
// harness) as service port 7055 and forwards a local port to the other
// members' 7055 (ACL of the demo policy: 7050-7059 between all members);
// once the raft leader is known, -streams connections write flat out from
// the leader's forward to the first follower's sink, so the bulk runs the
// same way as the leader's heartbeats to that follower, on the same tunnel
// peer and relay links. MB/s is what reached the sink over the measured
// window.
//
// The heartbeat round trip is raft_heartbeat_rtt_seconds, summed over the
// appliances (only a leader counts): from the leader's raft transport
// queueing a heartbeat to a follower to the follower's answer reaching it
// (node/raftlog/hbrtt.go), over both followers. p50/p99 are interpolated
// within the histogram's buckets (1, 2, 5, 10, 20, 30, 50, 75, 100, 200,
// 500 ms, ...); "> 50 ms" is exact (a bucket bound). Leader changes: the
// leader seen at the start polled every 100 ms on /status, each time it was
// found not leading; and the raft term change over the window.

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/memberd/memberd/internal/diag"
)

// bulkPort is the overlay port of every appliance's TCP sink.
const bulkPort = 7055

type consensusConfig struct {
	bin      string
	rounds   int
	duration time.Duration
	warmup   time.Duration
	streams  int
	rate     float64 // MB/s per stream, 0: flat out
	keep     bool
	only     string // "", "with" or "without"
}

type consensusRun struct {
	round            int
	prio             bool
	mbps             float64
	beats            uint64
	p50, p99         float64 // ms
	over50           float64 // fraction of round trips above 50 ms
	max              string  // bucket of the slowest round trip
	changes          int
	term0, term1     uint64
	load0, load1     string
	leader, follower string
	perFollower      []string
	sched            string // CPU run time and run-queue wait per process over the window
}

func parseConsensus(args []string) (*consensusConfig, error) {
	fs := flag.NewFlagSet("soak consensus", flag.ContinueOnError)
	var c consensusConfig
	fs.StringVar(&c.bin, "soak_bin", envStr("SOAK_BIN", "bin/memberd"), "the memberd binary under test")
	fs.IntVar(&c.rounds, "rounds", 1, "alternations (with the prioritisation, then without)")
	fs.DurationVar(&c.duration, "duration", envDur("BENCH_HB_DURATION", 5*time.Minute), "measured time per run (issue #15: 5m)")
	fs.DurationVar(&c.warmup, "warmup", 3*time.Second, "bulk transfer before the measurement starts")
	fs.IntVar(&c.streams, "streams", 2, "bulk TCP connections")
	fs.Float64Var(&c.rate, "rate", 0, "MB/s per bulk connection (0: flat out, saturating); below saturation it tells queueing from CPU contention")
	fs.StringVar(&c.only, "only", "", "with or without: run only that side")
	var keep string
	fs.StringVar(&keep, "soak_keep", envStr("SOAK_KEEP", "0"), "1 keeps the temporary folders")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.keep = keep == "1" || keep == "true"
	switch {
	case c.rounds < 1, c.streams < 1, c.duration <= 0:
		return nil, fmt.Errorf("-rounds, -streams and -duration must be positive")
	case c.only != "" && c.only != "with" && c.only != "without":
		return nil, fmt.Errorf("-only %q: want with or without", c.only)
	}
	return &c, nil
}

func envDur(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		fmt.Fprintf(os.Stderr, "%s=%q is not a duration (e.g. 5m, 30s): using %s\n", name, v, def)
	}
	return def
}

func runConsensus(args []string) int {
	c, err := parseConsensus(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak consensus:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rate := "flat out"
	if c.rate > 0 {
		rate = fmt.Sprintf("at most %.1f MB/s each", c.rate)
	}
	fmt.Printf("consensus: %d round(s) of %s measured per run after %s warm-up; bulk: %d TCP stream(s), %s, leader -> follower through the tunnel (service forward)\n",
		c.rounds, c.duration, c.warmup, c.streams, rate)
	var runs []consensusRun
	failed := false
	for round := 1; round <= c.rounds && ctx.Err() == nil; round++ {
		for _, prio := range []bool{true, false} {
			if (c.only == "with" && !prio) || (c.only == "without" && prio) {
				continue
			}
			r, err := consensusOnce(ctx, c, prio)
			r.round, r.prio = round, prio
			if err != nil {
				fmt.Printf("consensus: round %d %s: %v\n", round, prioName(prio), err)
				failed = true
				continue
			}
			fmt.Printf("consensus: round %d %-22s bulk %6.1f MB/s  heartbeats %6d  RTT p50 %6.1f ms  p99 %6.1f ms  >50ms %5.2f%%  max %s  leader changes %d (term %d -> %d)  load %s -> %s\n",
				round, prioName(prio), r.mbps, r.beats, r.p50, r.p99, 100*r.over50, r.max, r.changes, r.term0, r.term1, r.load0, r.load1)
			for _, f := range r.perFollower {
				fmt.Printf("consensus:   heartbeats to %s\n", f)
			}
			fmt.Printf("consensus:   CPU s/s running / waiting for a CPU (run queue), per process:%s\n", r.sched)
			runs = append(runs, r)
		}
	}
	fmt.Println("\n| round | prioritisation | bulk MB/s | heartbeats | RTT p50 ms | RTT p99 ms | > 50 ms | slowest | leader changes | term change | load1 start/end |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range runs {
		fmt.Printf("| %d | %s | %.1f | %d | %.1f | %.1f | %.2f%% | %s | %d | %d | %s / %s |\n", r.round, prioName(r.prio), r.mbps, r.beats,
			r.p50, r.p99, 100*r.over50, r.max, r.changes, r.term1-r.term0, r.load0, r.load1)
	}
	fmt.Println("\ntarget (issue #15, with the prioritisation): 0 leader changes, heartbeat RTT p99 < 50 ms")
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

func prioName(prio bool) string {
	if prio {
		return "with (default)"
	}
	return "without (" + diag.NoPriorityEnv + "=1)"
}

// consensusOnce runs one consortium with the bulk transfer and measures.
func consensusOnce(ctx context.Context, c *consensusConfig, prio bool) (consensusRun, error) {
	var r consensusRun
	cl, err := newCluster(&config{bin: c.bin, keep: c.keep})
	if err != nil {
		return r, err
	}
	defer cl.cleanup()
	off := "0"
	if !prio {
		off = "1"
	}
	cl.extraEnv = []string{diag.NoPriorityEnv + "=" + off}

	// One sink per member, counting what arrives.
	sinks := map[string]*sink{}
	defer func() {
		for _, s := range sinks {
			s.close()
		}
	}()
	members := []string{"member-a", "member-b", "member-c"} // demo init --members 3
	fwd := map[string]map[string]string{}                   // from -> to -> local forward address
	for _, m := range members {
		s, err := newSink()
		if err != nil {
			return r, err
		}
		sinks[m] = s
		fwd[m] = map[string]string{}
		for _, o := range members {
			if o != m {
				if fwd[m][o], err = freePort(); err != nil {
					return r, err
				}
			}
		}
	}
	cl.editMember = func(m map[string]any) {
		id, _ := m["member"].(string)
		if sinks[id] == nil {
			return
		}
		tun, _ := m["tunnel"].(map[string]any)
		if tun == nil {
			tun = map[string]any{}
		}
		tun["services"] = []any{map[string]any{"port": bulkPort, "target": sinks[id].addr()}}
		var fs []any
		for _, o := range members {
			if o != id {
				fs = append(fs, map[string]any{"listen": fwd[id][o], "member": o, "port": bulkPort})
			}
		}
		tun["forwards"] = fs
		m["tunnel"] = tun
	}
	if err := cl.setup(ctx); err != nil {
		cl.printDeaths()
		return r, fmt.Errorf("setup: %w", err)
	}
	fr := &faulter{cl: cl}
	leader, _, err := fr.leader(ctx)
	if err != nil {
		return r, err
	}
	var follower string
	for _, m := range members {
		if m != leader.name {
			follower = m
			break
		}
	}
	r.leader, r.follower = leader.name, follower
	fmt.Printf("consensus: %s: leader %s, bulk %s -> %s\n", prioName(prio), leader.name, leader.name, follower)

	bctx, stopBulk := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var bulkErr atomic.Value
	for range c.streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pushBulk(bctx, fwd[leader.name][follower], c.rate); err != nil && bctx.Err() == nil {
				bulkErr.Store(err)
			}
		}()
	}
	defer func() { stopBulk(); wg.Wait() }()
	if !sleepCtxOK(ctx, c.warmup) {
		return r, ctx.Err()
	}
	if sinks[follower].bytes.Load() == 0 {
		return r, fmt.Errorf("no bulk byte reached %s's sink in %s (%v)", follower, c.warmup, bulkErr.Load())
	}

	st0, err := cl.status(ctx, leader)
	if err != nil {
		return r, err
	}
	h0, err := rttHistogram(ctx, cl)
	if err != nil {
		return r, err
	}
	r.load0 = strings.Fields(loadAvg())[0]
	s0 := schedAll(cl)
	b0, t0 := sinks[follower].bytes.Load(), time.Now()
	stopWatch := watchLeadership(ctx, cl, leader)
	if !sleepCtxOK(ctx, c.duration) {
		stopWatch()
		return r, ctx.Err()
	}
	lw := stopWatch()
	b1, t1 := sinks[follower].bytes.Load(), time.Now()
	s1 := schedAll(cl)
	for _, p := range cl.procs {
		a, ok0 := s0[p.name]
		b, ok1 := s1[p.name]
		if ok0 && ok1 {
			win := t1.Sub(t0).Seconds()
			r.sched += fmt.Sprintf(" %s %.2f/%.2f", p.name, (b[0]-a[0]).Seconds()/win, (b[1]-a[1]).Seconds()/win)
		}
	}
	h1, err := rttHistogram(ctx, cl)
	if err != nil {
		return r, err
	}
	r.load1 = strings.Fields(loadAvg())[0]
	st1, err := cl.status(ctx, leader)
	if err != nil {
		st1 = st0
	}
	r.mbps = float64(b1-b0) / t1.Sub(t0).Seconds() / 1e6
	r.changes = lw.changes
	r.term0, r.term1 = st0.Ledger.Term, max(lw.maxTerm, st1.Ledger.Term, st0.Ledger.Term)
	d := h1.all().minus(h0.all())
	r.beats = d.count()
	r.p50, r.p99 = d.quantile(0.5), d.quantile(0.99)
	r.over50 = d.above(0.05)
	r.max = d.slowest()
	for _, m := range members {
		if m == leader.name {
			continue
		}
		dm := h1.of(m).minus(h0.of(m))
		what := "idle"
		if m == follower {
			what = "bulk"
		}
		r.perFollower = append(r.perFollower, fmt.Sprintf("%s (%s, raft %s): %d, p50 %.1f ms, p99 %.1f ms, > 50 ms %.2f%%",
			m, what, h1.ids[m], dm.count(), dm.quantile(0.5), dm.quantile(0.99), 100*dm.above(0.05)))
	}
	if r.beats == 0 {
		return r, fmt.Errorf("no heartbeat answered in %s", c.duration)
	}
	if err, _ := bulkErr.Load().(error); err != nil {
		fmt.Printf("consensus: a bulk stream ended early: %v\n", err)
	}
	return r, nil
}

func sleepCtxOK(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// pushBulk writes to addr until ctx ends, flat out or at rate MB/s,
// reconnecting when the connection breaks.
func pushBulk(ctx context.Context, addr string, rate float64) error {
	buf := make([]byte, 64<<10)
	start, sent := time.Now(), 0.0
	var last error
	for ctx.Err() == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			last = err
			if !sleepCtxOK(ctx, 200*time.Millisecond) {
				break
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		for {
			if rate > 0 { // pace: never ahead of rate since start
				if ahead := time.Duration(sent/(rate*1e6)*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
			n, err := conn.Write(buf)
			sent += float64(n)
			if err != nil {
				last = err
				break
			}
		}
		stop()
		conn.Close()
	}
	return last
}

// schedAll is, per running process, the CPU time its threads ran and
// waited on a run queue (/proc/PID/task/*/schedstat, fields 1 and 2):
// the wait is the machine's contention for the 2 cores as the process saw
// it. Threads that ended in between are missing (Go keeps its threads).
func schedAll(cl *cluster) map[string][2]time.Duration {
	out := map[string][2]time.Duration{}
	for _, p := range cl.procs {
		pid, _, _, running := p.current()
		if !running {
			continue
		}
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			continue
		}
		var v [2]time.Duration
		for _, t := range tasks {
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
			if err != nil {
				continue
			}
			f := strings.Fields(string(raw))
			if len(f) < 2 {
				continue
			}
			run, err1 := strconv.ParseInt(f[0], 10, 64)
			wait, err2 := strconv.ParseInt(f[1], 10, 64)
			if err1 == nil && err2 == nil {
				v[0] += time.Duration(run)
				v[1] += time.Duration(wait)
			}
		}
		out[p.name] = v
	}
	return out
}

// sink is a TCP listener that reads and counts everything sent to it.
type sink struct {
	ln    net.Listener
	bytes atomic.Uint64
	mu    sync.Mutex
	conns []net.Conn
}

func newSink() (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					s.bytes.Add(uint64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s, nil
}

func (s *sink) addr() string { return s.ln.Addr().String() }

func (s *sink) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// hist is raft_heartbeat_rtt_seconds: cumulative counts by upper bound
// (+Inf included).
type hist map[float64]float64

// rtts is raft_heartbeat_rtt_seconds of every appliance, summed by
// follower (its raft ID, the label peer), and each appliance's raft ID
// (the label node of its raft_term).
type rtts struct {
	byPeer map[string]hist
	ids    map[string]string // member -> raft ID
}

func (r rtts) all() hist {
	out := hist{}
	for _, h := range r.byPeer {
		for k, v := range h {
			out[k] += v
		}
	}
	return out
}

func (r rtts) of(member string) hist {
	if h := r.byPeer[r.ids[member]]; h != nil {
		return h
	}
	return hist{}
}

// label returns the value of label name in a metric line.
func label(line, name string) string {
	i := strings.Index(line, name+`="`)
	if i < 0 {
		return ""
	}
	v := line[i+len(name)+2:]
	if j := strings.IndexByte(v, '"'); j >= 0 {
		return v[:j]
	}
	return ""
}

func rttHistogram(ctx context.Context, cl *cluster) (rtts, error) {
	r := rtts{byPeer: map[string]hist{}, ids: map[string]string{}}
	seen := false
	for _, p := range cl.members() {
		body, err := cl.getRaw(ctx, p, "/metrics")
		if err != nil {
			return r, fmt.Errorf("%s /metrics: %w", p.name, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "raft_term{") && r.ids[p.name] == "" {
				r.ids[p.name] = label(line, "node")
			}
			if strings.HasPrefix(line, "# TYPE raft_heartbeat_rtt_seconds ") {
				seen = true
			}
			if !strings.HasPrefix(line, "raft_heartbeat_rtt_seconds_bucket{") {
				continue
			}
			j := strings.LastIndex(line, "}")
			le, err1 := strconv.ParseFloat(label(line, "le"), 64)
			v, err2 := strconv.ParseFloat(strings.TrimSpace(line[j+1:]), 64)
			if err1 != nil || err2 != nil {
				continue
			}
			peer := label(line, "peer")
			if r.byPeer[peer] == nil {
				r.byPeer[peer] = hist{}
			}
			r.byPeer[peer][le] += v
		}
	}
	if !seen {
		return r, fmt.Errorf("no raft_heartbeat_rtt_seconds in the appliances' /metrics: a binary older than this benchmark?")
	}
	return r, nil
}

func (h hist) minus(o hist) hist {
	out := hist{}
	for k, v := range h {
		out[k] = v - o[k]
	}
	return out
}

func (h hist) bounds() []float64 {
	var b []float64
	for k := range h {
		b = append(b, k)
	}
	sort.Float64s(b)
	return b
}

func (h hist) count() uint64 { return uint64(h[math.Inf(1)]) }

// quantile interpolates linearly within the bucket holding q (ms), as
// Prometheus's histogram_quantile does; in the +Inf bucket it returns the
// highest finite bound.
func (h hist) quantile(q float64) float64 {
	total := h[math.Inf(1)]
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	lo, prev := 0.0, 0.0
	for _, ub := range h.bounds() {
		c := h[ub]
		if c >= rank {
			if math.IsInf(ub, 1) {
				return lo * 1000
			}
			if c == prev {
				return ub * 1000
			}
			return 1000 * (lo + (ub-lo)*(rank-prev)/(c-prev))
		}
		lo, prev = ub, c
	}
	return lo * 1000
}

// above is the fraction of round trips above bound (a bucket bound).
func (h hist) above(bound float64) float64 {
	total := h[math.Inf(1)]
	if total == 0 {
		return 0
	}
	return (total - h[bound]) / total
}

// slowest names the bucket of the slowest round trip, e.g. "<= 20 ms".
func (h hist) slowest() string {
	b := h.bounds()
	for i := len(b) - 1; i > 0; i-- {
		if h[b[i]] > h[b[i-1]] {
			if math.IsInf(b[i], 1) {
				return fmt.Sprintf("> %g ms", b[i-1]*1000)
			}
			return fmt.Sprintf("<= %g ms", b[i]*1000)
		}
	}
	if len(b) > 0 && h[b[0]] > 0 {
		return fmt.Sprintf("<= %g ms", b[0]*1000)
	}
	return "-"
}

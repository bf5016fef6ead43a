package main

// `soak bench` (make bench-appliance, issue #15): ordering through the
// appliances as users deploy them (`memberd demo init`: 2 relays, 3
// appliances, raft over the WireGuard tunnel and the relays) against the
// node-alone cluster (node/orderer's BenchmarkOrdering: 3 consenters, raft
// direct on loopback TCP+TLS), alternated in the same run, under the same
// load: pre-signed 1 KB envelopes over 4 pipelined Broadcast streams (TLS)
// to the raft leader, BatchSize 500 / BatchTimeout 2 s (the demo's and the
// benchmark's settings).
//
// Per run it prints committed tx/s (first send to last SUCCESS),
// submit→SUCCESS p50/p99, the leader's CPU per tx and txs per block, then
// the ratio appliances / node-alone. The appliance leader's CPU is the
// utime+stime delta of its process (/proc/PID/stat) over the load; the
// node-alone leader's is getrusage of the benchmark process that runs only
// the leader. After each appliance run the envelopes are read back with
// Deliver from the leader and counted.

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"

	"github.com/memberd/memberd/internal/benchload"
	"github.com/memberd/memberd/node/orderer"
)

type benchConfig struct {
	bin, ordererTest, ordererDir string
	rounds, tx, streams, size    int
	window                       int    // unanswered envelopes per stream, 0: no bound
	profile                      string // CPU profiles of every process (last round): a folder, or a file for the leader's alone
	profileSecs                  int
	keep                         bool
	// random: the appliances' envelopes carry random payloads (worst
	// case for raft compression) instead of a repeated alphabet; the
	// node-alone benchmark keeps its own payloads.
	random bool
}

// benchRun is one measured run.
type benchRun struct {
	round                          int
	what                           string // node-alone or appliances
	txs, p50, p99, cpuUs, perBlock float64
	load1                          float64
	note                           string
}

func parseBench(args []string) (*benchConfig, error) {
	fs := flag.NewFlagSet("soak bench", flag.ContinueOnError)
	var c benchConfig
	fs.StringVar(&c.bin, "soak_bin", envStr("SOAK_BIN", "bin/memberd"), "the memberd binary under test")
	fs.StringVar(&c.ordererTest, "orderer_test", "bin/orderer.test", "node/orderer's test binary (go test -c), for the node-alone cluster")
	fs.StringVar(&c.ordererDir, "orderer_dir", "node/orderer", "folder the node-alone benchmark runs in")
	fs.IntVar(&c.rounds, "rounds", 2, "alternations (node-alone, then appliances)")
	fs.IntVar(&c.tx, "tx", 20000, "envelopes per run (at least 20000: the node-alone benchmark's minimum)")
	fs.IntVar(&c.streams, "streams", 4, "Broadcast streams: 4 or 16 (the node-alone benchmark's cases)")
	fs.IntVar(&c.size, "size", 1024, "payload bytes: 1024 or 100 (the node-alone benchmark's cases)")
	fs.IntVar(&c.window, "window", 200, "unanswered envelopes per stream (0: no bound, as BenchmarkOrdering alone sends)")
	fs.StringVar(&c.profile, "profile", "", "CPU profiles during the last round's load (turns admin_pprof on): a file ending in .pprof for the leader appliance's, else a folder for every process's (leader.pprof, member-*.pprof, relay-*.pprof)")
	fs.IntVar(&c.profileSecs, "profile_seconds", 4, "length of that profile")
	fs.BoolVar(&c.random, "random", false, "random envelope payloads for the appliances (the node-alone cluster keeps its own)")
	var keep string
	fs.StringVar(&keep, "soak_keep", envStr("SOAK_KEEP", "0"), "1 keeps the temporary folders")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.keep = keep == "1" || keep == "true"
	if c.streams != 4 && c.streams != 16 {
		return nil, fmt.Errorf("-streams %d: the node-alone benchmark has 4 or 16", c.streams)
	}
	if c.size != 1024 && c.size != 100 {
		return nil, fmt.Errorf("-size %d: the node-alone benchmark has 1024 or 100", c.size)
	}
	if c.tx < 20000 || c.rounds < 1 {
		return nil, fmt.Errorf("-tx %d -rounds %d: want at least 20000 envelopes and 1 round", c.tx, c.rounds)
	}
	return &c, nil
}

func runBench(args []string) int {
	c, err := parseBench(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("bench: %d rounds; load: %d envelopes of %d bytes, %d streams x %d unanswered (0: no bound), TLS, BatchSize 500, BatchTimeout 2s\n",
		c.rounds, c.tx, c.size, c.streams, c.window)
	if c.random {
		fmt.Println("bench: random payloads for the appliances; the node-alone cluster keeps its own")
	}
	var runs []benchRun
	failed := false
	for round := 1; round <= c.rounds && ctx.Err() == nil; round++ {
		for _, what := range []string{"node-alone", "appliances"} {
			var r benchRun
			var err error
			if what == "node-alone" {
				r, err = benchNodeAlone(ctx, c)
			} else {
				r, err = benchAppliances(ctx, c, round == c.rounds)
			}
			r.round, r.what = round, what
			if err != nil {
				fmt.Printf("bench: round %d %s: %v\n", round, what, err)
				failed = true
				continue
			}
			fmt.Printf("bench: round %d %-10s %7.0f tx/s  p50 %5.0f ms  p99 %5.0f ms  leader %4.0f µs CPU/tx  %5.1f tx/block  load %.1f %s\n",
				round, what, r.txs, r.p50, r.p99, r.cpuUs, r.perBlock, r.load1, r.note)
			runs = append(runs, r)
		}
	}
	printBench(runs)
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

func printBench(runs []benchRun) {
	fmt.Println("\n| round | cluster | tx/s | p50 ms | p99 ms | leader CPU µs/tx | tx/block | load1 |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	sum := map[string]*benchRun{}
	n := map[string]float64{}
	for _, r := range runs {
		fmt.Printf("| %d | %s | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f |\n", r.round, r.what, r.txs, r.p50, r.p99, r.cpuUs, r.perBlock, r.load1)
		s := sum[r.what]
		if s == nil {
			s = &benchRun{}
			sum[r.what] = s
		}
		s.txs += r.txs
		s.p50 += r.p50
		s.p99 += r.p99
		s.cpuUs += r.cpuUs
		n[r.what]++
	}
	a, b := sum["appliances"], sum["node-alone"]
	if a == nil || b == nil {
		fmt.Println("\nno ratio: a cluster has no successful run")
		return
	}
	na, nb := n["appliances"], n["node-alone"]
	fmt.Printf("\nmeans: node-alone %.0f tx/s, p50 %.0f ms, p99 %.0f ms, %.0f µs CPU/tx; appliances %.0f tx/s, p50 %.0f ms, p99 %.0f ms, %.0f µs CPU/tx\n",
		b.txs/nb, b.p50/nb, b.p99/nb, b.cpuUs/nb, a.txs/na, a.p50/na, a.p99/na, a.cpuUs/na)
	fmt.Printf("ratio appliances/node-alone: throughput %.2f× (target ≥ 0.9×), leader CPU per tx %.2f×, p50 %.2f×\n",
		(a.txs/na)/(b.txs/nb), (a.cpuUs/na)/(b.cpuUs/nb), (a.p50/na)/(b.p50/nb))
}

// benchNodeAlone runs BenchmarkOrdering's matching case once (a fresh
// cluster) and reads its metrics.
func benchNodeAlone(ctx context.Context, c *benchConfig) (benchRun, error) {
	bin, err := filepath.Abs(c.ordererTest)
	if err != nil {
		return benchRun{}, err
	}
	pattern := fmt.Sprintf("BenchmarkOrdering$/^timeout=2s$/^env=%dB$/^streams=%d$", c.size, c.streams)
	// -test.benchtime Nx (N > 1) runs the case twice on the same cluster
	// (b.N=1, which orders 20,000 anyway, then b.N=N): 1x is one run on a
	// fresh cluster, as the appliances get.
	benchtime := "1x"
	if c.tx > 20000 {
		benchtime = fmt.Sprintf("%dx", c.tx)
	}
	cmd := exec.CommandContext(ctx, bin, "-test.run", "^$", "-test.bench", pattern, "-test.benchtime", benchtime)
	cmd.Dir = c.ordererDir
	cmd.Env = append(os.Environ(), fmt.Sprintf("ORDERER_BENCH_WINDOW=%d", c.window))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return benchRun{}, fmt.Errorf("%s -test.bench %s: %v\n%s", bin, pattern, err, indent(string(out)))
	}
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "BenchmarkOrdering/") {
			continue
		}
		f := strings.Fields(line)
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseFloat(f[i], 64)
			m[f[i+1]] = v
		}
		return benchRun{txs: m["tx/s"], p50: m["p50-ms"], p99: m["p99-ms"], cpuUs: m["leader-cpu-µs/tx"],
			perBlock: m["tx/block"], load1: m["load1"]}, nil
	}
	return benchRun{}, fmt.Errorf("%s: no result line in:\n%s", bin, indent(string(out)))
}

// benchAppliances starts a fresh consortium, loads its raft leader and
// stops it; with profile (and c.profile set) it also takes a CPU profile of
// the leader during the load.
func benchAppliances(ctx context.Context, c *benchConfig, profile bool) (benchRun, error) {
	profile = profile && c.profile != ""
	sc := &config{bin: c.bin, keep: c.keep, size: c.size}
	cl, err := newCluster(sc)
	if err != nil {
		return benchRun{}, err
	}
	defer cl.cleanup()
	if profile {
		cl.editMember = func(m map[string]any) { m["admin_pprof"] = true }
		cl.editRelay = cl.editMember
	}
	if err := cl.setup(ctx); err != nil {
		cl.printDeaths()
		return benchRun{}, fmt.Errorf("setup: %w", err)
	}
	l, err := newLoader(sc, cl)
	if err != nil {
		return benchRun{}, err
	}
	defer l.close()
	fr := &faulter{cl: cl}
	leader, term, err := fr.leader(ctx)
	if err != nil {
		return benchRun{}, err
	}
	conn, err := l.dial(leader.ledgerAddr)
	if err != nil {
		return benchRun{}, err
	}
	defer conn.Close()
	envs := make([]*common.Envelope, c.tx)
	for i := range envs {
		data := append([]byte(fmt.Sprintf("bench tx %d ", i)), l.payload...)[:c.size]
		if c.random {
			rand.Read(data)
		}
		if envs[i], _, err = orderer.NewTransaction(l.id, l.channel, data, time.Now()); err != nil {
			return benchRun{}, err
		}
	}
	st0, err := cl.status(ctx, leader)
	if err != nil {
		return benchRun{}, err
	}
	pid, _, _, _ := leader.current()
	var prof chan error
	var profiled []string
	if profile {
		targets := map[string]*proc{c.profile: leader}
		if !strings.HasSuffix(c.profile, ".pprof") {
			if err := os.MkdirAll(c.profile, 0o755); err != nil {
				return benchRun{}, err
			}
			targets = map[string]*proc{filepath.Join(c.profile, "leader.pprof"): leader}
			for _, p := range cl.procs {
				if p != leader {
					targets[filepath.Join(c.profile, p.name+".pprof")] = p
				}
			}
		}
		prof = make(chan error, len(targets))
		for path, p := range targets {
			profiled = append(profiled, fmt.Sprintf("%s -> %s", p.name, path))
			go func() { prof <- cl.saveProfile(ctx, p, path, c.profileSecs) }()
		}
	}
	cpu0, err := procCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	others0 := othersCPU(cl, leader)
	stopWatch := watchLeadership(ctx, cl, leader)
	res := benchload.Run(ab.NewAtomicBroadcastClient(conn), envs, c.streams, 0, c.window)
	ok, elapsed, lat := res.OK, res.Elapsed, res.Lat
	cpu1, err := procCPU(pid)
	if err != nil {
		return benchRun{}, err
	}
	others1 := othersCPU(cl, leader)
	lw := stopWatch()
	st1, err := cl.status(ctx, leader)
	if err != nil {
		return benchRun{}, err
	}
	elections := fmt.Sprintf("leader changes during the load: %d, highest term %d (was %d)", lw.changes, max(lw.maxTerm, st1.Ledger.Term), term)
	if ok != c.tx {
		return benchRun{}, fmt.Errorf("%d SUCCESS of %d; other answers: %v; %s (logs in %s with -soak_keep 1)", ok, c.tx, res.Other, elections, cl.dir)
	}
	r := benchRun{txs: float64(ok) / elapsed.Seconds(), p50: ms(benchload.Percentile(lat, 0.5)),
		p99: ms(benchload.Percentile(lat, 0.99)), cpuUs: float64((cpu1 - cpu0).Microseconds()) / float64(ok)}
	r.load1, _ = strconv.ParseFloat(strings.Fields(loadAvg())[0], 64)
	if st1.Ledger.Term != term || st1.Ledger.Leader != leader.name {
		r.note = fmt.Sprintf("(leader changed during the run: %s term %d -> %s term %d)", leader.name, term, st1.Ledger.Leader, st1.Ledger.Term)
	}
	r.note += fmt.Sprintf("[%s; leader %s; CPU µs/tx of the others:", elections, leader.name)
	for _, p := range cl.procs {
		if d, found := others1[p.name]; found && p != leader {
			r.note += fmt.Sprintf(" %s %.0f", p.name, float64((d-others0[p.name]).Microseconds())/float64(ok))
		}
	}
	r.note += "]" + relayDrops(ctx, cl, ok)
	n, err := countDelivered(ctx, l, ab.NewAtomicBroadcastClient(conn), st0.Ledger.Height, st1.Ledger.Height)
	if err != nil {
		return r, fmt.Errorf("reading blocks %d..%d back with Deliver: %w", st0.Ledger.Height, st1.Ledger.Height-1, err)
	}
	if n != c.tx {
		return r, fmt.Errorf("Deliver: %d envelopes in blocks %d..%d, want %d", n, st0.Ledger.Height, st1.Ledger.Height-1, c.tx)
	}
	r.perBlock = float64(n) / float64(max(st1.Ledger.Height-st0.Ledger.Height, 1))
	for range profiled {
		if err := <-prof; err != nil {
			fmt.Println("bench: profile:", err)
		}
	}
	if len(profiled) > 0 {
		fmt.Printf("bench: CPU profiles (leader %s, pid %d): %s (go tool pprof -top %s FILE)\n", leader.name, pid, strings.Join(profiled, ", "), c.bin)
	}
	return r, nil
}

// relayDrops lists the packets each relay dropped so far, by reason (the
// rate limit, full queues): a run capped by a relay shows it here.
func relayDrops(ctx context.Context, cl *cluster, txs int) string {
	out, fwd := "", ""
	for _, p := range cl.procs {
		if !p.relay {
			continue
		}
		body, err := cl.getRaw(ctx, p, "/metrics")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(body), "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && strings.Contains(f[0], "dropped_packets_total{") && f[1] != "0" {
				out += fmt.Sprintf(" %s %s=%s", p.name, f[0][strings.IndexByte(f[0], '{'):], f[1])
			}
			if len(f) == 2 && strings.HasSuffix(f[0], "_forwarded_bytes_total") {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil && txs > 0 {
					fwd += fmt.Sprintf(" %s %.0f", p.name, v/float64(txs))
				}
			}
		}
	}
	if fwd != "" {
		fwd = " [bytes forwarded per tx since start:" + fwd + "]"
	}
	if out == "" {
		return " [relays dropped nothing]" + fwd
	}
	return " [relay drops:" + out + "]" + fwd
}

// othersCPU is the CPU time of every process but the leader, by name.
func othersCPU(cl *cluster, leader *proc) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, p := range cl.procs {
		pid, _, _, running := p.current()
		if p == leader || !running {
			continue
		}
		if t, err := procCPU(pid); err == nil {
			out[p.name] = t
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// countDelivered reads blocks from..to-1 with Deliver and counts envelopes.
func countDelivered(ctx context.Context, l *loader, conn ab.AtomicBroadcastClient, from, to uint64) (int, error) {
	if to <= from {
		return 0, errors.New("no new block")
	}
	n := 0
	err := orderer.Fetch(ctx, conn, l.id, l.channel, orderer.SeekRange(from, to-1, ab.SeekInfo_BLOCK_UNTIL_READY),
		func(b *common.Block) error { n += len(b.GetData().GetData()); return nil })
	return n, err
}

// procCPU is a process's user+system CPU time from /proc/PID/stat (fields
// 14 and 15, in clock ticks of 1/100 s, USER_HZ on Linux).
func procCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	stt, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, s)
	}
	return time.Duration(ut+stt) * 10 * time.Millisecond, nil
}

// saveProfile fetches /debug/pprof/profile from p's admin endpoint.
func (cl *cluster) saveProfile(ctx context.Context, p *proc, path string, secs int) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.admin, secs)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: time.Duration(secs+30) * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// leadership is what watchLeadership saw.
type leadership struct {
	changes int    // times the watched leader was seen not leading (stepped down, or another leader)
	maxTerm uint64 // the highest raft term any appliance reported
}

// watchLeadership polls every appliance's /status every 100 ms until the
// returned function is called, which returns what it saw. Consensus first
// (issue #15): under flat-out load the leader must keep leading; a leader
// that steps down for want of heartbeat answers (CheckQuorum) may do so
// without any term change, so the term alone does not show it.
func watchLeadership(ctx context.Context, cl *cluster, leader *proc) func() leadership {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan leadership, 1)
	go func() {
		var lw leadership
		leading := true
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- lw
				return
			case <-t.C:
			}
			for _, p := range cl.members() {
				st, err := cl.status(ctx, p)
				if err != nil {
					continue
				}
				lw.maxTerm = max(lw.maxTerm, st.Ledger.Term)
				if p != leader {
					continue
				}
				now := st.Ledger.RaftState == "StateLeader" && st.Ledger.Leader == leader.name
				if leading && !now {
					lw.changes++
				}
				leading = now
			}
		}
	}()
	return func() leadership {
		cancel()
		return <-done
	}
}

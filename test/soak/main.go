// Command soak is the ledger endurance run of issue #9 (`make soak`): the
// real memberd binary as users deploy it (a consortium written by `memberd
// demo init`, two `memberd relay` and three `memberd run` processes, raft
// over the tunnel, SoftHSM2 identities), under sustained Fabric Broadcast
// load through member-a's LAN ledger API (the other members' while it is
// down, as a Fabric SDK with several orderer endpoints), with optional
// scripted kill -9 faults of a follower, the leader and a relay.
//
// It prints a line every SOAK_EVERY acknowledged transactions (acked,
// committed, lost, tx/s, and per process RSS, Go heap, goroutines, open
// fds), and at the end a table and a verdict. It passes only if
//   - no acknowledged (SUCCESS) envelope is missing from the chain of any
//     member, and the chains are identical on every member;
//   - no process died that the harness did not kill;
//   - every appliance's RSS stayed at or below SOAK_MAX_RSS_MB;
//   - RSS, goroutines and fds are flat: the mean of the last third of the
//     samples is at most 10% above the mean of the middle third (per
//     process, over its longest run between two starts, after that run's
//     first 2 minutes).
//
// Settings (environment, or the flags of the same name in lower case):
//
//	SOAK_TX=1000000        envelopes to submit (each until SUCCESS or given up)
//	SOAK_EVERY=50000       progress line every so many acked envelopes
//	SOAK_STREAMS=4         Broadcast streams
//	SOAK_WINDOW=200        envelopes in flight per stream
//	SOAK_SIZE=1024         payload bytes per envelope
//	SOAK_MAX_DURATION=2h   stop submitting after this long
//	SOAK_MAX_RSS_MB=150    RSS bound per appliance
//	SOAK_ABORT_RSS_MB=3072 stop the load early (and fail) when an appliance passes this
//	SOAK_FAULTS=           e.g. follower,leader,relay: kill -9 + restart, in turn
//	                       (entry: the member the load goes to, member-a;
//	                       entryleader: member-a made raft leader, then killed;
//	                       term: a follower stopped with SIGTERM, not kill -9)
//	SOAK_FAULT_EVERY=3m    time between faults (the first after one interval)
//	SOAK_FAULT_DOWN=2s     how long a killed process stays down
//	SOAK_SAMPLE=5s         process sampling interval
//	SOAK_STALL=3m          fail when no envelope is acked for this long
//	SOAK_KEEP=0            1 keeps the temporary folder (logs, ledgers)
//	SOAK_PPROF=0           1 turns admin_pprof on for the appliances: goroutine
//	                       dumps at http://ADMIN/debug/pprof/goroutine?debug=1
//	SOAK_BIN=bin/memberd   the binary under test
//
// Every process it starts is ended by PID, and its temporary folder
// removed, also on failure and on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	bin        string
	tx         int
	every      int
	streams    int
	window     int
	size       int
	maxDur     time.Duration
	maxRSSMB   int
	abortRSSMB int
	faults     []string
	faultEvery time.Duration
	faultDown  time.Duration
	sample     time.Duration
	stall      time.Duration
	keep       bool
	pprof      bool
}

func envStr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func parseConfig(args []string) (*config, error) {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	var c config
	var faults, keep, pprof string
	ints := []struct {
		p   *int
		env string
		def int
	}{{&c.tx, "SOAK_TX", 1_000_000}, {&c.every, "SOAK_EVERY", 50_000}, {&c.streams, "SOAK_STREAMS", 4},
		{&c.window, "SOAK_WINDOW", 200}, {&c.size, "SOAK_SIZE", 1024}, {&c.maxRSSMB, "SOAK_MAX_RSS_MB", 150},
		{&c.abortRSSMB, "SOAK_ABORT_RSS_MB", 3072}}
	for _, i := range ints {
		def := i.def
		if v := envStr(i.env, ""); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("%s=%q: want a positive whole number", i.env, v)
			}
			def = n
		}
		fs.IntVar(i.p, strings.ToLower(i.env), def, "see "+i.env)
	}
	durs := []struct {
		p   *time.Duration
		env string
		def time.Duration
	}{{&c.maxDur, "SOAK_MAX_DURATION", 2 * time.Hour}, {&c.faultEvery, "SOAK_FAULT_EVERY", 3 * time.Minute},
		{&c.faultDown, "SOAK_FAULT_DOWN", 2 * time.Second}, {&c.sample, "SOAK_SAMPLE", 5 * time.Second},
		{&c.stall, "SOAK_STALL", 3 * time.Minute}}
	for _, d := range durs {
		def := d.def
		if v := envStr(d.env, ""); v != "" {
			x, err := time.ParseDuration(v)
			if err != nil || x <= 0 {
				return nil, fmt.Errorf("%s=%q: want a positive duration such as 3m", d.env, v)
			}
			def = x
		}
		fs.DurationVar(d.p, strings.ToLower(d.env), def, "see "+d.env)
	}
	fs.StringVar(&c.bin, "soak_bin", envStr("SOAK_BIN", "bin/memberd"), "the memberd binary under test")
	fs.StringVar(&faults, "soak_faults", envStr("SOAK_FAULTS", ""), "comma-separated faults: follower, leader, relay, entry, entryleader, term")
	fs.StringVar(&keep, "soak_keep", envStr("SOAK_KEEP", "0"), "1 keeps the temporary folder")
	fs.StringVar(&pprof, "soak_pprof", envStr("SOAK_PPROF", "0"), "1 turns admin_pprof on for every appliance (goroutine dumps at /debug/pprof/ on each admin address)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.keep = keep == "1" || keep == "true"
	c.pprof = pprof == "1" || pprof == "true"
	for _, f := range strings.Split(faults, ",") {
		switch f = strings.TrimSpace(f); f {
		case "":
		case faultFollower, faultLeader, faultRelay, faultEntry, faultEntryLeader, faultTerm:
			c.faults = append(c.faults, f)
		default:
			return nil, fmt.Errorf("SOAK_FAULTS: unknown fault %q (use follower, leader, relay, entry, entryleader, term)", f)
		}
	}
	if c.every > c.tx {
		c.every = c.tx
	}
	return &c, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "consensus" {
		os.Exit(runConsensus(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "bench" {
		os.Exit(runBench(os.Args[2:]))
	}
	c, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	os.Exit(run(c))
}

// run returns the exit code: 0 pass, 1 fail, 2 setup error.
func run(c *config) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cl, err := newCluster(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	defer cl.cleanup()
	start := time.Now()
	if err := cl.setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "soak: setup:", err)
		cl.printDeaths()
		return 2
	}
	fmt.Printf("soak: consortium up in %v (%s); load: %d envelopes of %d bytes, %d streams x %d in flight, to %s at %s; faults: %s every %v\n",
		time.Since(start).Round(time.Millisecond), cl.dir, c.tx, c.size, c.streams, c.window, cl.entry, cl.member(cl.entry).ledgerAddr,
		orNone(c.faults), c.faultEvery)
	r := runSoak(ctx, c, cl)
	r.print(c, cl)
	if ctx.Err() != nil {
		fmt.Println("soak: interrupted")
		return 1
	}
	if len(r.failures) > 0 {
		return 1
	}
	return 0
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

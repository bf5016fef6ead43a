package main

// The run: load, samples, progress lines, faults, then the verification of
// every member's chain and the verdict.

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/orderer"
)

type result struct {
	failures []string
	notes    []string
	faults   []*faultResult
	loadDur  time.Duration

	issued, acked, committed      int64
	retries, reconnects           int64
	statuses                      map[string]int
	height                        uint64
	verified                      []string       // members whose chain was fetched
	lost                          map[string]int // acked but missing, per member
	dupInChain                    map[string]int
	dupRefused, dupRefusedInChain int
	gaveUp, gaveUpInChain         int
	unresolved, unresolvedInChain int
	loadAvg                       string
	smp                           *sampler
}

func (r *result) fail(format string, a ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, a...))
}

func runSoak(ctx context.Context, c *config, cl *cluster) *result {
	r := &result{lost: map[string]int{}, dupInChain: map[string]int{}}
	l, err := newLoader(c, cl)
	if err != nil {
		r.fail("load client: %v", err)
		return r
	}
	defer l.close()
	var conns []*grpc.ClientConn
	for _, p := range cl.members() {
		conn, err := l.dial(p.ledgerAddr)
		if err != nil {
			r.fail("dial %s: %v", p.ledgerAddr, err)
			return r
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	smp := newSampler(cl)
	r.smp = smp
	smp.take(ctx)

	loadCtx, stopLoad := context.WithTimeout(ctx, c.maxDur)
	defer stopLoad()
	followCtx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	go l.follow(followCtx, conns)

	start := time.Now()
	stalled := make(chan string, 1)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		progress(loadCtx, c, l, smp, start, stalled, stopLoad)
	}()
	faultsOut := make(chan *faultResult, 16)
	if len(c.faults) > 0 {
		go (&faulter{cfg: c, cl: cl, l: l}).run(loadCtx, faultsOut)
	} else {
		close(faultsOut)
	}

	l.run(loadCtx)
	r.loadDur = time.Since(start)
	if loadCtx.Err() == context.DeadlineExceeded {
		r.notes = append(r.notes, fmt.Sprintf("stopped by SOAK_MAX_DURATION=%v", c.maxDur))
	}
	stopLoad()
	for f := range faultsOut {
		r.faults = append(r.faults, f)
	}
	<-progressDone
	select {
	case s := <-stalled:
		r.fail("%s", s)
	default:
	}
	final, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	printProgress(l, smp.take(final), start, start, 0, cl)
	cancel()
	r.loadAvg = loadAvg()

	if ctx.Err() == nil {
		r.height = verifyChains(ctx, cl, l, conns, r)
	}
	stopFollow()
	r.judge(c, cl, l, smp)
	return r
}

// progress prints a line every cfg.every acked envelopes and samples the
// processes every cfg.sample; it stops the load when nothing was acked
// for cfg.stall, or when an appliance's RSS passed cfg.abortRSSMB (the
// run has failed by then, and the machine is shared).
func progress(ctx context.Context, c *config, l *loader, smp *sampler, start time.Time, stalled chan<- string, stop func()) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastSample := time.Now()
	mark, lastMarkAt, lastMarkAcked := int64(c.every), start, int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		acked := l.st.acked.Load()
		if time.Since(lastSample) >= c.sample {
			for name, x := range smp.take(ctx) {
				if p := smp.cl.member(name); p != nil && !p.relay && x.rss > float64(c.abortRSSMB)*(1<<20) {
					stalled <- fmt.Sprintf("stopped early: %s RSS %s MB passed SOAK_ABORT_RSS_MB=%d (acked %d)", name, mb(x.rss), c.abortRSSMB, acked)
					fmt.Printf("!! %s RSS %s MB passed SOAK_ABORT_RSS_MB=%d; stopping the load\n", name, mb(x.rss), c.abortRSSMB)
					stop()
					return
				}
			}
			lastSample = time.Now()
		}
		if acked >= mark {
			printProgress(l, smp.take(ctx), start, lastMarkAt, lastMarkAcked, smp.cl)
			lastSample = time.Now()
			lastMarkAt, lastMarkAcked = time.Now(), acked
			for mark <= acked {
				mark += int64(c.every)
			}
		}
		l.st.mu.Lock()
		last := l.st.lastAck
		l.st.mu.Unlock()
		if last.IsZero() {
			last = start
		}
		if time.Since(last) > c.stall {
			stalled <- fmt.Sprintf("stalled: no envelope acked for %v (acked %d)", c.stall, acked)
			fmt.Printf("!! stalled: no envelope acked for %v; stopping the load\n", c.stall)
			stop()
			return
		}
	}
}

func printProgress(l *loader, ss map[string]sample, start, since time.Time, sinceAcked int64, cl *cluster) {
	acked := l.st.acked.Load()
	el := time.Since(start)
	rate := float64(acked-sinceAcked) / max(time.Since(since).Seconds(), 1e-3)
	fmt.Printf("soak %7s: acked %d committed %d lost %d | %.0f tx/s (avg %.0f) | retries %d reconnects %d | load %s\n",
		el.Round(time.Second), acked, l.st.committed.Load(), l.lostNow(30*time.Second), rate,
		float64(acked)/max(el.Seconds(), 1e-3), l.st.retries.Load(), l.st.reconnects.Load(), loadAvg())
	for _, p := range cl.procs {
		x, ok := ss[p.name]
		if !ok {
			fmt.Printf("    %-9s down\n", p.name)
			continue
		}
		h := ""
		if !p.relay {
			h = fmt.Sprintf("  height %d", x.height)
		}
		fmt.Printf("    %-9s pid %-7d rss %6s MB  heap %6s MB  goroutines %5s  fds %4s%s\n",
			p.name, x.pid, mb(x.rss), mb(x.heap), num(x.gor), num(x.fds), h)
	}
}

// verifyChains waits for every running member to reach the same height,
// fetches every block from each with Deliver (checking the hash chain and
// data hashes), compares the header hashes across members and marks which
// tracked tx ids each member's chain holds.
func verifyChains(ctx context.Context, cl *cluster, l *loader, conns []*grpc.ClientConn, r *result) uint64 {
	ms := cl.members()
	var h uint64
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var hs []uint64
		var errs []string
		for _, p := range ms {
			if _, _, _, running := p.current(); !running {
				continue
			}
			st, err := cl.status(ctx, p)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", p.name, err))
				continue
			}
			hs = append(hs, st.Ledger.Height)
		}
		if len(errs) == 0 && len(hs) > 0 && allEqual(hs) {
			h = hs[0]
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			r.fail("members did not reach one height within 3m: heights %v %s", hs, strings.Join(errs, "; "))
			h = slices.Max(append(hs, 0))
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Printf("soak: verifying blocks 0..%d on every member\n", h-1)
	var ref [][]byte
	refName := ""
	for i, p := range ms {
		if _, _, _, running := p.current(); !running {
			r.notes = append(r.notes, p.name+" was not running at the end: its chain was not checked")
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
		var hashes [][]byte
		var prev *common.Block
		bit := uint16(fMember0 << i)
		dups := 0
		err := orderer.Fetch(fctx, ab.NewAtomicBroadcastClient(conns[i]), l.id, l.channel,
			orderer.SeekRange(0, h-1, ab.SeekInfo_BLOCK_UNTIL_READY), func(b *common.Block) error {
				if b.GetHeader().GetNumber() != uint64(len(hashes)) {
					return fmt.Errorf("got block %d, want %d", b.GetHeader().GetNumber(), len(hashes))
				}
				if err := block.Verify(b, prev); err != nil {
					return fmt.Errorf("block %d: %w", len(hashes), err)
				}
				hashes = append(hashes, block.HeaderHash(b.Header))
				prev = b
				if len(hashes) == 1 {
					return nil // genesis
				}
				l.st.mu.Lock()
				defer l.st.mu.Unlock()
				for _, raw := range b.GetData().GetData() {
					env, err := block.ParseEnvelope(raw)
					if err != nil {
						return fmt.Errorf("block %d: %w", b.Header.Number, err)
					}
					k := keyOf(env.TxID())
					if f, ok := l.st.tx[k]; ok {
						if f&bit != 0 {
							dups++
						}
						l.st.tx[k] = f | bit
					}
				}
				return nil
			})
		cancel()
		if err != nil {
			r.fail("fetching the chain of %s: %v", p.name, err)
			continue
		}
		r.verified = append(r.verified, p.name)
		r.dupInChain[p.name] = dups
		if ref == nil {
			ref, refName = hashes, p.name
			continue
		}
		if len(hashes) != len(ref) {
			r.fail("%s holds %d blocks, %s %d", p.name, len(hashes), refName, len(ref))
		}
		for j := range min(len(ref), len(hashes)) {
			if !bytes.Equal(ref[j], hashes[j]) {
				r.fail("block %d differs between %s and %s", j, refName, p.name)
				break
			}
		}
	}
	// Count per member what is missing.
	l.st.mu.Lock()
	defer l.st.mu.Unlock()
	for _, f := range l.st.tx {
		inAny := f&^uint16(fMember0-1) != 0
		switch {
		case f&fAcked != 0:
			for i, p := range ms {
				if slices.Contains(r.verified, p.name) && f&uint16(fMember0<<i) == 0 {
					r.lost[p.name]++
				}
			}
		case f&fDupRefused != 0:
			r.dupRefused++
			if inAny {
				r.dupRefusedInChain++
			}
		case f&fGaveUp != 0:
			r.gaveUp++
			if inAny {
				r.gaveUpInChain++
			}
		default:
			r.unresolved++
			if inAny {
				r.unresolvedInChain++
			}
		}
	}
	return h
}

// judge applies the pass criteria.
func (r *result) judge(c *config, cl *cluster, l *loader, smp *sampler) {
	r.issued, r.acked, r.committed = l.st.issued.Load(), l.st.acked.Load(), l.st.committed.Load()
	r.retries, r.reconnects = l.st.retries.Load(), l.st.reconnects.Load()
	l.st.mu.Lock()
	r.statuses = map[string]int{}
	for k, v := range l.st.statuses {
		r.statuses[k] = v
	}
	l.st.mu.Unlock()
	for _, m := range r.verified {
		if n := r.lost[m]; n > 0 {
			r.fail("%d acked envelopes are missing from the chain of %s", n, m)
		}
	}
	for _, d := range cl.deathList() {
		r.fail("%s (pid %d) died at %s: %v (log %s)", d.name, d.pid, d.at.Format(time.TimeOnly), d.err, d.logFile)
	}
	for _, p := range cl.members() {
		var peak float64
		for _, x := range smp.all(p.name) {
			peak = max(peak, x.rss)
		}
		if peak > float64(c.maxRSSMB)*(1<<20) {
			r.fail("%s RSS reached %s MB (SOAK_MAX_RSS_MB=%d)", p.name, mb(peak), c.maxRSSMB)
		}
	}
	for _, p := range cl.procs {
		fl, n := flatness(smp.all(p.name))
		if fl == nil {
			r.notes = append(r.notes, fmt.Sprintf("%s: %d samples in its longest run after that run's first %v, too few (< 6) to judge flatness", p.name, n, flatWarmup))
		}
		for _, q := range fl {
			if !q.ok {
				r.fail("%s %s not flat: last third %.1f vs middle third %.1f (+%.0f%%, allowed +10%%)",
					p.name, q.what, scale(q.what, q.last), scale(q.what, q.mid), 100*(q.last/q.mid-1))
			}
		}
	}
	for _, f := range r.faults {
		for _, s := range f.steps {
			if !s.ok {
				r.fail("fault %s %s: %s: not within %v", f.kind, f.target, s.what, recoveryTimeout)
			}
		}
		if strings.HasPrefix(f.note, "restart failed") {
			r.fail("fault %s %s: %s", f.kind, f.target, f.note)
		}
	}
	if r.acked == 0 {
		r.fail("no envelope was acked")
	}
}

func scale(what string, v float64) float64 {
	if what == "rss" {
		return v / (1 << 20)
	}
	return v
}

func (r *result) print(c *config, cl *cluster) {
	verdict := "PASS"
	if len(r.failures) > 0 {
		verdict = "FAIL"
	}
	fmt.Printf("\n== soak result: %s\n", verdict)
	fmt.Printf("envelopes: %d issued, %d acked (SUCCESS); refused as duplicate on resubmission %d (in chain %d); given up %d (in chain %d); unanswered at the end %d (in chain %d)\n",
		r.issued, r.acked, r.dupRefused, r.dupRefusedInChain, r.gaveUp, r.gaveUpInChain, r.unresolved, r.unresolvedInChain)
	fmt.Printf("load: %d acked in %v = %.0f tx/s; %d streams x %d in flight, %d-byte payloads; resubmissions %d, stream reconnects %d\n",
		r.acked, r.loadDur.Round(time.Second), float64(r.acked)/max(r.loadDur.Seconds(), 1e-3), c.streams, c.window, c.size, r.retries, r.reconnects)
	if len(r.statuses) > 0 {
		var ks []string
		for k, v := range r.statuses {
			ks = append(ks, fmt.Sprintf("%s %d", k, v))
		}
		sort.Strings(ks)
		fmt.Printf("answers other than SUCCESS: %s\n", strings.Join(ks, ", "))
	}
	fmt.Printf("chain: height %d; fetched and verified from %s; acked missing:", r.height, strings.Join(r.verified, ", "))
	for _, m := range r.verified {
		fmt.Printf(" %s %d", m, r.lost[m])
	}
	fmt.Printf("; tx ids twice in a chain:")
	for _, m := range r.verified {
		fmt.Printf(" %s %d", m, r.dupInChain[m])
	}
	fmt.Printf("\nmachine: load average at the end of the load %s (1, 5, 15 min)\n", r.loadAvg)
	fmt.Printf("\n%-9s %6s %8s %8s %8s %8s %9s %9s %13s %11s  %s\n", "process", "starts", "rss0 MB", "rssMid", "rssLast", "rssMax", "heapLast", "heapMax", "goroutines", "fds", "flat (last vs middle third)")
	for _, p := range cl.procs {
		ss := r.smp.all(p.name)
		_, starts, _, _ := p.current()
		if len(ss) == 0 {
			fmt.Printf("%-9s %6d  (no samples)\n", p.name, starts)
			continue
		}
		var rssMax, heapMax float64
		for _, x := range ss {
			rssMax, heapMax = max(rssMax, x.rss), max(heapMax, x.heap)
		}
		fl, n := flatness(ss)
		verdict := fmt.Sprintf("n/a (%d samples)", n)
		gor, fds := "?", "?"
		rssMid, rssLast := "?", "?"
		if fl != nil {
			var parts []string
			for _, q := range fl {
				mark := "ok"
				if !q.ok {
					mark = "GROWS"
				}
				parts = append(parts, fmt.Sprintf("%s %+.0f%% %s", q.what, 100*(q.last/q.mid-1), mark))
			}
			verdict = strings.Join(parts, ", ")
			rssMid, rssLast = mb(fl[0].mid), mb(fl[0].last)
			gor = fmt.Sprintf("%.0f->%.0f", fl[1].mid, fl[1].last)
			fds = fmt.Sprintf("%.0f->%.0f", fl[2].mid, fl[2].last)
		}
		fmt.Printf("%-9s %6d %8s %8s %8s %8s %9s %9s %13s %11s  %s\n", p.name, starts, mb(ss[0].rss), rssMid, rssLast,
			mb(rssMax), mb(ss[len(ss)-1].heap), mb(heapMax), gor, fds, verdict)
	}
	if len(r.faults) > 0 {
		fmt.Printf("\nfaults (kill -9; SIGTERM for term; restarted after %v):\n", c.faultDown)
		for i, f := range r.faults {
			fmt.Printf("  %d. %s %s at %s %s\n", i+1, f.kind, f.target, f.at.Format(time.TimeOnly), f.note)
			for _, s := range f.steps {
				res := s.took.Round(time.Millisecond).String()
				if !s.ok {
					res = "NOT RECOVERED"
				}
				fmt.Printf("       %-85s %s\n", s.what, res)
			}
		}
	}
	for _, n := range r.notes {
		fmt.Printf("note: %s\n", n)
	}
	for _, f := range r.failures {
		fmt.Printf("FAIL: %s\n", f)
	}
}

func allEqual(x []uint64) bool {
	for _, v := range x {
		if v != x[0] {
			return false
		}
	}
	return true
}

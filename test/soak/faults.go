package main

// Scripted faults: kill -9 a raft follower, the raft leader or the relay
// the entry member sends on, restart it after SOAK_FAULT_DOWN, and time the
// recovery (new leader elected, traffic back, member caught up, members on
// the other relay).

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/memberd/memberd/internal/appliance"
)

const (
	faultFollower = "follower"
	faultLeader   = "leader"
	faultRelay    = "relay"
	// faultEntry kills the member the load client talks to, whatever its
	// raft role: the client's streams break and must reconnect (to another
	// member meanwhile, then back to it).
	faultEntry = "entry"
	// faultEntryLeader hands the raft leadership to the entry member
	// (memberd ledger transfer-leader) and kills it: the leader kill that
	// also breaks the client's streams (issue #11: 6-7 s without SUCCESS
	// when the client knew only that member).
	faultEntryLeader = "entryleader"
	// faultTerm restarts a follower gracefully (SIGTERM), as an upgrade
	// does: it closes its raft connections, so its peers see them reset.
	faultTerm = "term"
)

// recoveryTimeout bounds each recovery step.
const recoveryTimeout = 3 * time.Minute

// step is one timed recovery step of a fault.
type step struct {
	what string
	took time.Duration // from the kill, or from the restart where what says so
	ok   bool
}

type faultResult struct {
	kind, target string
	at           time.Time
	steps        []step
	note         string
}

func (f *faultResult) add(what string, took time.Duration, ok bool) {
	f.steps = append(f.steps, step{what, took, ok})
	res := took.Round(time.Millisecond).String()
	if !ok {
		res = "NOT within " + took.Round(time.Second).String()
	}
	fmt.Printf("   fault %s %s: %s: %s\n", f.kind, f.target, what, res)
}

type faulter struct {
	cfg *config
	cl  *cluster
	l   *loader
	// lastTerm is the raft term seen at the end of the previous fault
	// (0: none yet), to catch elections after the recovery steps.
	lastTerm uint64
}

// run injects the faults in turn, every cfg.faultEvery, until ctx ends.
// A fault in progress is completed (the process restarted) even then.
func (fr *faulter) run(ctx context.Context, out chan<- *faultResult) {
	defer close(out)
	for i := 0; ; i++ {
		sleepCtx(ctx, fr.cfg.faultEvery)
		if ctx.Err() != nil {
			return
		}
		kind := fr.cfg.faults[i%len(fr.cfg.faults)]
		out <- fr.inject(ctx, kind)
	}
}

func (fr *faulter) inject(ctx context.Context, kind string) *faultResult {
	f := &faultResult{kind: kind, at: time.Now()}
	leader, term, err := fr.leader(ctx)
	if err != nil {
		f.note = "skipped: " + err.Error()
		fmt.Printf("   fault %s: %s\n", kind, f.note)
		return f
	}
	if fr.lastTerm != 0 && term != fr.lastTerm {
		f.note = fmt.Sprintf("raft term %d -> %d since the previous fault's recovery (leader changed); ", fr.lastTerm, term)
		fmt.Printf("   fault %s: %s\n", kind, f.note)
	}
	var target *proc
	switch kind {
	case faultLeader:
		target = leader
	case faultEntryLeader:
		if leader.name != fr.cl.entry {
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			res, err := appliance.TransferLeaderViaAdmin(tctx, leader.admin, "", fr.cl.entry)
			cancel()
			if err != nil {
				f.note = "skipped: " + err.Error()
				fmt.Printf("   fault %s: %s\n", kind, f.note)
				return f
			}
			fmt.Printf("   fault %s: leadership handed from %s to %s (term %d)\n", kind, leader.name, res.Leader, res.Term)
			sleepCtx(ctx, 2*time.Second) // the hand-over's own pause is not the fault's
			if leader, term, err = fr.leader(ctx); err != nil || leader.name != fr.cl.entry {
				f.note = fmt.Sprintf("skipped: %s does not lead after the hand-over (%v)", fr.cl.entry, err)
				fmt.Printf("   fault %s: %s\n", kind, f.note)
				return f
			}
		}
		target = leader
	case faultFollower, faultTerm:
		// A follower other than the entry member if there is one, so the
		// load keeps its connection.
		for _, p := range fr.cl.members() {
			if p != leader && (target == nil || target.name == fr.cl.entry) {
				target = p
			}
		}
	case faultRelay:
		target = fr.activeRelay(ctx)
	case faultEntry:
		target = fr.cl.member(fr.cl.entry)
	}
	if target == nil {
		f.note = "skipped: no target"
		return f
	}
	f.target = target.name
	// The same measure with no fault, just before it: what a busy host
	// makes of the pauses anyway.
	calm := time.Now().Add(3 * time.Second)
	noise, _ := fr.watchPause(func() bool { return time.Now().After(calm) || ctx.Err() != nil })()
	if ctx.Err() != nil {
		// The load ended meanwhile: no traffic to measure a gap in.
		f.note = "skipped: the load ended"
		fmt.Printf("   fault %s: %s\n", kind, f.note)
		return f
	}
	f.add("longest pause between acks in the 3s before the kill (no fault yet: the noise)", noise, true)
	acked0 := fr.l.st.acked.Load()
	how, sig := "kill -9", syscall.SIGKILL
	if kind == faultTerm {
		how, sig = "SIGTERM", syscall.SIGTERM
	}
	fmt.Printf("== fault %s: %s %s at %s (pid %d; leader %s, term %d, acked %d)\n", kind, how, target.name,
		time.Now().UTC().Format("15:04:05.000"), pidOf(target), leader.name, term, acked0)
	// Traffic back: more acked than everything in flight at the kill, or,
	// for a fault near the end of the run, every envelope resolved (fewer
	// than that many were left to send).
	inFlight := int64(fr.cfg.streams * fr.cfg.window)
	trafficBack := func() bool {
		return fr.l.st.acked.Load() > acked0+inFlight || fr.l.st.resolved.Load() >= int64(fr.cfg.tx)
	}
	pause := fr.watchPause(trafficBack)

	t0 := time.Now()
	fr.cl.signal(target, sig, true)

	// A new leader: any member (the killed one too, once restarted: it may
	// win the next election itself) reports a leader in a later term. The
	// check runs beside the restart, which comes after SOAK_FAULT_DOWN
	// whatever the survivors do.
	var elected func()
	if target == leader {
		done := make(chan struct{})
		var d time.Duration
		var ok bool
		go func() {
			defer close(done)
			d, ok = fr.until(ctx, t0, func(c context.Context) bool {
				for _, p := range fr.cl.members() {
					if st, err := fr.cl.status(c, p); err == nil && st.Ledger.Leader != "" && st.Ledger.Term > term {
						return true
					}
				}
				return false
			})
		}()
		elected = func() {
			<-done
			f.add("new leader elected (any member reports a leader in a later term)", d, ok)
		}
	}
	switch {
	case target.relay:
		d, ok := fr.until(ctx, t0, func(c context.Context) bool {
			for _, p := range fr.cl.members() {
				st, err := fr.cl.status(c, p)
				if err != nil || !slices.ContainsFunc(st.Relays, func(r relayStatus) bool {
					return r.ID != target.name && (r.Active || r.Backup) && r.Healthy
				}) {
					return false
				}
			}
			return true
		})
		f.add("every member sending on the other relay (active, or backup while the dead one is quiet)", d, ok)
	}
	// The load fails over to another member while the entry member is
	// down (load.go), so traffic comes back before any restart.
	d, ok := fr.until(ctx, t0, func(context.Context) bool { return trafficBack() })
	f.add(fmt.Sprintf("traffic back (%d more acked than in flight)", inFlight), d, ok)
	if ok {
		if p, ok := pause(); ok {
			f.add("longest pause between acks, kill to traffic back (the traffic gap)", p, true)
		}
	}

	sleepCtx(context.Background(), max(0, fr.cfg.faultDown-time.Since(t0)))
	if err := fr.cl.start(target); err != nil {
		f.note = "restart failed: " + err.Error()
		fmt.Printf("!! %s\n", f.note)
		if elected != nil {
			elected()
		}
		return f
	}
	t1 := time.Now()
	if elected != nil {
		elected()
	}
	if target.relay {
		d, ok := fr.until(ctx, t1, func(c context.Context) bool {
			for _, p := range fr.cl.members() {
				st, err := fr.cl.status(c, p)
				if err != nil || !slices.ContainsFunc(st.Relays, func(r relayStatus) bool { return r.ID == target.name && r.State == "up" && r.Since.After(t1) }) {
					return false
				}
			}
			return true
		})
		f.add("relay back, every member reconnected to it (from restart)", d, ok)
	} else {
		d, ok := fr.until(ctx, t1, func(c context.Context) bool {
			st, err := fr.cl.status(c, target)
			return err == nil && st.Ledger.Leader != ""
		})
		f.add("restarted member knows a leader (from restart)", d, ok)
		d, ok = fr.until(ctx, t1, func(c context.Context) bool { return fr.caughtUp(c, target) })
		f.add("restarted member caught up (height within 1 block of the leader's, from restart)", d, ok)
	}
	// The run may be ending (ctx done): still read the term after the fault.
	tctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, term2, err := fr.leader(tctx); err == nil {
		note := fmt.Sprintf("raft term %d -> %d", term, term2)
		if term2 != term {
			note += " (leader changed)"
		}
		f.note += note
		fr.lastTerm = term2
		fmt.Printf("   fault %s %s: %s\n", f.kind, f.target, note)
	}
	return f
}

// watchPause polls the acked count every 2 ms, from now until done holds
// (or recoveryTimeout), and measures the longest time it did not move: the
// gap the fault made in the traffic, as the client saw it. The returned
// func waits for the watch to end and reports that pause (false: done
// never held); call it only once done held, or it waits recoveryTimeout.
func (fr *faulter) watchPause(done func() bool) func() (time.Duration, bool) {
	type result struct {
		pause time.Duration
		ok    bool
	}
	res := make(chan result, 1)
	go func() {
		deadline := time.Now().Add(recoveryTimeout)
		last, lastAt := fr.l.st.acked.Load(), time.Now()
		var longest time.Duration
		for time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
			now := time.Now()
			if n := fr.l.st.acked.Load(); n != last {
				longest = max(longest, now.Sub(lastAt))
				last, lastAt = n, now
			}
			if done() {
				res <- result{longest, true}
				return
			}
		}
		res <- result{longest, false}
	}()
	var once sync.Once
	var r result
	return func() (time.Duration, bool) {
		once.Do(func() { r = <-res })
		return r.pause, r.ok
	}
}

// until polls cond every 100 ms up to recoveryTimeout and returns the time
// since from when it held.
func (fr *faulter) until(ctx context.Context, from time.Time, cond func(context.Context) bool) (time.Duration, bool) {
	deadline := time.Now().Add(recoveryTimeout)
	for time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ok := cond(c)
		cancel()
		if ok {
			return time.Since(from), true
		}
		if ctx.Err() != nil {
			// The run is ending: keep waiting, but not for long.
			if soon := time.Now().Add(20 * time.Second); soon.Before(deadline) {
				deadline = soon
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(from), false
}

// leader returns the raft leader's process and term, as a running member sees it.
func (fr *faulter) leader(ctx context.Context) (*proc, uint64, error) {
	var errs []string
	for range 100 {
		for _, p := range fr.cl.members() {
			st, err := fr.cl.status(ctx, p)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			if lp := fr.cl.member(st.Ledger.Leader); lp != nil {
				return lp, st.Ledger.Term, nil
			}
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	return nil, 0, fmt.Errorf("no member knows a raft leader (%s)", strings.Join(errs[max(0, len(errs)-3):], "; "))
}

// activeRelay is the relay the entry member sends on.
func (fr *faulter) activeRelay(ctx context.Context) *proc {
	st, err := fr.cl.status(ctx, fr.cl.member(fr.cl.entry))
	if err != nil {
		return fr.cl.relays()[0]
	}
	for _, r := range st.Relays {
		if r.Active {
			if p := fr.cl.member(r.ID); p != nil {
				return p
			}
		}
	}
	return fr.cl.relays()[0]
}

// caughtUp: p's height is within one block of the leader's (the leader
// cuts a block every moment under load).
func (fr *faulter) caughtUp(ctx context.Context, p *proc) bool {
	st, err := fr.cl.status(ctx, p)
	if err != nil {
		return false
	}
	lp := fr.cl.member(st.Ledger.Leader)
	if lp == nil {
		return false
	}
	lst, err := fr.cl.status(ctx, lp)
	if err != nil {
		return false
	}
	return st.Ledger.Height+1 >= lst.Ledger.Height
}

func pidOf(p *proc) int {
	pid, _, _, _ := p.current()
	return pid
}

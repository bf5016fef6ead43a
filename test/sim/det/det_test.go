package det

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// Flags (make sim passes DSEEDS as -det.seeds).
var flagSeed = flag.Uint64("det.seed", 1, "first seed")

var (
	flagSeeds = flag.Int("det.seeds", 0, "number of seeds (TestDetSeeds; default 5, 2 with -short)")
	flagPlant = flag.String("det.plant", "", "plant a bug: ack-early, no-sync or no-install-record (TestDetSeeds then expects violations to be found)")
	flagLogs  = flag.Bool("det.logs", false, "log every event")
	flagRuns  = flag.Int("det.replays", 2, "runs of each seed in TestDetReplay")
	flagDir   = flag.String("det.dir", "/dev/shm", "directory for the nodes' files when it exists (else the test's temp dir): on tmpfs fsync costs nothing, and the simulation models what a crash keeps itself")
	flagTrace = flag.String("det.traces", "", "append each seed's trace line to this file (make sim compares two processes' files)")
)

func logf(t *testing.T) func(string, ...any) {
	if *flagLogs {
		return t.Logf
	}
	return nil
}

// TestDetSeeds runs seeds det.seed.. det.seed+det.seeds-1 and checks the
// invariants on each. Each prints "trace seed=N hash=H events=E": a
// second process must print the same lines (make sim compares them).
func TestDetSeeds(t *testing.T) {
	start := time.Now()
	var failed []uint64
	seeds := *flagSeeds
	if seeds == 0 {
		seeds = 5
		if testing.Short() {
			seeds = 2
		}
	}
	var traces *os.File
	if *flagTrace != "" {
		var err error
		if traces, err = os.OpenFile(*flagTrace, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			t.Fatal(err)
		}
		defer traces.Close()
	}
	var snaps, divergent, divSeeds, raises, raiseSeeds int
	removals := map[string]int{}
	for i := range seeds {
		seed := *flagSeed + uint64(i)
		var r result
		t.Run("seed", func(t *testing.T) { r = run(t, seed, plant(*flagPlant), logf(t)) })
		line := fmt.Sprintf("trace seed=%d hash=%s events=%d blocks=%d acked=%d violations=%d", seed, r.hash, r.events, r.blocks, r.acked, len(r.violations))
		snaps, divergent = snaps+r.snaps, divergent+r.divergent
		removals[r.removal]++
		if r.raises > 0 {
			raises, raiseSeeds = raises+r.raises, raiseSeeds+1
		}
		if r.divergent > 0 {
			divSeeds++
		}
		if r.removal != "" {
			line += " removal=" + r.removal
		}
		t.Log(line)
		if traces != nil {
			fmt.Fprintln(traces, line)
		}
		if len(r.violations) > 0 {
			failed = append(failed, seed)
			if *flagPlant == "" {
				t.Errorf("seed %d: %s\nreproduce: go test -count=1 -v -run 'TestDetSeeds' ./test/sim/det -det.seed=%d -det.seeds=1 -det.logs",
					seed, strings.Join(r.violations, "\n  "), seed)
			} else {
				t.Logf("seed %d (plant %s): %s", seed, *flagPlant, r.violations[0])
			}
		}
	}
	t.Logf("%d seeds in %v, failing: %v", seeds, time.Since(start).Round(time.Millisecond), failed)
	t.Logf("removals: %d seeds, the removed node knew it at the end on %d (the others never told it on %d); it raised a remaining node's term %d times on %d seeds",
		removals["learnt"]+removals["unaware"], removals["learnt"], removals["unaware"], raises, raiseSeeds)
	t.Logf("%d snapshots delivered, %d of them over a log with another term at their index (on %d seeds)", snaps, divergent, divSeeds)
	if *flagPlant != "" && len(failed) == 0 {
		t.Errorf("plant %s: no seed of %d..%d found it", *flagPlant, *flagSeed, *flagSeed+uint64(seeds)-1)
	}
}

// TestDetReplay: every run of a seed gives the same trace (every event:
// message delivered, dropped or lost, tick, crash, restart, proposal,
// block stored with its hash).
func TestDetReplay(t *testing.T) {
	for seed := *flagSeed; seed < *flagSeed+3; seed++ {
		var first result
		for run1 := range *flagRuns {
			var r result
			t.Run("seed", func(t *testing.T) { r = run(t, seed, plantNone, logf(t)) })
			if run1 == 0 {
				first = r
				continue
			}
			if r.hash != first.hash || r.events != first.events {
				t.Errorf("seed %d: run %d has trace %s (%d events), run 0 %s (%d events): the simulation is not deterministic",
					seed, run1, r.hash, r.events, first.hash, first.events)
			}
		}
		t.Logf("seed %d: %d runs, trace %s, %d events, %d blocks", seed, *flagRuns, first.hash, first.events, first.blocks)
	}
}

// TestDetPlantedReproduces: with a planted bug (acks before quorum, a
// WAL that never fsyncs, a snapshot install not recorded in the WAL), a seed that fails is found and fails again on
// each of five reruns by its number, with the identical trace.
func TestDetPlantedReproduces(t *testing.T) {
	// Where each plant's search starts: the no-install-record plant needs
	// a follower that gets a snapshot over a log with another term at its
	// index, then restarts before its next snapshot (8 of 1,280 snapshots
	// delivered on seeds 1-1,000 were over such a log); 410 is its first
	// failing seed, so the search starts near it to keep the test short.
	for _, pc := range []struct {
		pl    plant
		start uint64
	}{{plantAckEarly, 1}, {plantNoSync, 1}, {plantNoInstall, 401}} {
		pl := pc.pl
		var seed uint64
		var first result
		for s := pc.start; s < pc.start+200 && seed == 0; s++ {
			var r result
			t.Run(string(pl), func(t *testing.T) { r = run(t, s, pl, nil) })
			if len(r.violations) > 0 {
				seed, first = s, r
			}
		}
		if seed == 0 {
			t.Errorf("plant %s: no failing seed in %d..%d", pl, pc.start, pc.start+199)
			continue
		}
		t.Logf("plant %s: seed %d fails: %s (trace %s)", pl, seed, first.violations[0], first.hash)
		same := 0
		for range 5 {
			var r result
			t.Run(string(pl), func(t *testing.T) { r = run(t, seed, pl, nil) })
			if len(r.violations) > 0 && r.hash == first.hash && r.violations[0] == first.violations[0] {
				same++
			}
		}
		t.Logf("plant %s: seed %d failed with the identical trace on %d of 5 reruns", pl, seed, same)
		if same != 5 {
			t.Errorf("plant %s: seed %d reproduced %d of 5 times", pl, seed, same)
		}
	}
}

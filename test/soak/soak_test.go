package main

// Tests of the harness's own logic (the soak itself runs with `make soak`).

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	body := []byte(`# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 82
go_memstats_heap_alloc_bytes 9.236336e+06
go_memstats_heap_alloc_bytes_total 1
memberd_ledger_height{channel="demo"} 7
`)
	got := parseMetrics(body, "go_memstats_heap_alloc_bytes", "go_goroutines", "memberd_ledger_height", "absent")
	want := []float64{9236336, 82, -1, -1} // labelled samples are not read
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("value %d = %v, want %v (all %v)", i, got[i], want[i], got)
		}
	}
}

func TestProcRSSSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	if rss := procRSS(os.Getpid()); rss < 1<<20 || rss > 1<<40 {
		t.Errorf("procRSS(self) = %v, want a plausible byte count", rss)
	}
	if rss := procRSS(-1); rss != -1 {
		t.Errorf("procRSS(-1) = %v, want -1", rss)
	}
}

// series is one run of a process: a sample at its start, then the given
// ones every 5 s from the end of flatWarmup (the only ones judged).
func series(start int, rss ...float64) []sample {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	ss := []sample{{at: t0, start: start, rss: 40 << 20, gor: 50, fds: 20}}
	return append(ss, every5s(start, t0.Add(flatWarmup), rss...)...)
}

// every5s is samples every 5 s from t0.
func every5s(start int, t0 time.Time, rss ...float64) []sample {
	var ss []sample
	for i, r := range rss {
		ss = append(ss, sample{at: t0.Add(time.Duration(i) * 5 * time.Second), start: start, rss: r * (1 << 20), gor: 50, fds: 20})
	}
	return ss
}

// ramp is n values from lo, step apart.
func ramp(n int, lo, step float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = lo + float64(i)*step
	}
	return v
}

func TestFlatness(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ss     []sample
		n      int
		rssOK  bool
		judged bool
	}{
		{"flat", series(1, 40, 90, 100, 101, 99, 102, 100, 103, 101), 9, true, true},
		{"grows", series(1, 40, 100, 110, 120, 130, 140, 150, 160, 170), 9, false, true},
		{"shrinks", series(1, 40, 200, 200, 200, 150, 150, 150), 7, true, true},
		{"within 10%", series(1, 100, 100, 100, 109, 109, 109), 6, true, true},
		{"too few", series(1, 40, 100, 200), 3, false, false},
		// Only the samples since the last start count.
		{"after restart", append(series(1, 40, 500, 900, 900, 900, 900), series(2, 40, 90, 100, 100, 100, 100)...), 6, true, true},
		// The longest run counts: a last run too short to judge does not
		// hide growth in the one before it.
		{"restart, earlier run judged", append(series(1, 40, 50, 60, 70, 80, 90), series(2, 40, 90)...), 6, false, true},
		{"restart, both too short", append(series(1, 40, 50, 60), series(2, 40, 90)...), 3, false, false},
		// A run sampled only during its warm-up is not judged, however it
		// grows; after the warm-up it is.
		{"warm-up only", every5s(1, time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), ramp(24, 40, 10)...), 0, false, false},
		{"grows after warm-up", every5s(1, time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), ramp(24+12, 40, 10)...), 12, false, true},
		{"flat after warm-up", every5s(1, time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), append(ramp(24, 40, 10), ramp(12, 300, 0)...)...), 12, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl, n := flatness(tc.ss)
			if n != tc.n {
				t.Errorf("n = %d, want %d", n, tc.n)
			}
			if (fl != nil) != tc.judged {
				t.Fatalf("judged = %v, want %v", fl != nil, tc.judged)
			}
			if fl == nil {
				return
			}
			if fl[0].what != "rss" || fl[0].ok != tc.rssOK {
				t.Errorf("rss verdict %+v, want ok=%v", fl[0], tc.rssOK)
			}
			for _, q := range fl[1:] {
				if !q.ok {
					t.Errorf("%s (constant) judged not flat: %+v", q.what, q)
				}
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	t.Setenv("SOAK_TX", "200000")
	t.Setenv("SOAK_FAULTS", "follower, relay")
	t.Setenv("SOAK_FAULT_EVERY", "90s")
	c, err := parseConfig([]string{"-soak_every", "1000"})
	if err != nil {
		t.Fatal(err)
	}
	if c.tx != 200000 || c.every != 1000 || c.faultEvery != 90*time.Second || c.maxRSSMB != 150 || c.streams != 4 {
		t.Errorf("config %+v", c)
	}
	if strings.Join(c.faults, ",") != "follower,relay" {
		t.Errorf("faults %q", c.faults)
	}
	for env, bad := range map[string]string{"SOAK_TX": "many", "SOAK_FAULTS": "leader,disk", "SOAK_SAMPLE": "-1s"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, bad)
			if _, err := parseConfig(nil); err == nil || !strings.Contains(err.Error(), env) {
				t.Errorf("%s=%s: error %v, want one naming %s", env, bad, err, env)
			}
		})
	}
}

func TestLogTailPanic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "member-b.1.log")
	log := `{"level":"INFO","msg":"started"}
{"level":"INFO","msg":"more"}
panic: runtime error: invalid memory address or nil pointer dereference
goroutine 7 [running]:
node/raftlog.(*transport).acceptLoop.func1()
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := logTail(path, 1); !strings.HasPrefix(got, "panic: runtime error") || !strings.Contains(got, "acceptLoop") {
		t.Errorf("logTail = %q, want the panic and its trace", got)
	}
	if err := os.WriteFile(path, []byte("a\nb\nc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := logTail(path, 2); got != "b\nc" {
		t.Errorf("logTail = %q, want the last 2 lines", got)
	}
}

// TestPickFailover: streams use the entry member unless it failed within
// failoverHold, then the other members (spread by stream), and the entry
// again once it has been quiet that long or when every member failed.
func TestPickFailover(t *testing.T) {
	now := time.Now()
	l := &loader{targets: []*target{{name: "member-a"}, {name: "member-b"}, {name: "member-c"}}}
	fail := func(i int, ago time.Duration) { l.targets[i].failedAt.Store(now.Add(-ago).UnixNano()) }
	if got := l.pick(0, now); got != 0 {
		t.Fatalf("no failures: stream 0 on target %d, want the entry", got)
	}
	fail(0, time.Second)
	if a, b := l.pick(0, now), l.pick(1, now); a == 0 || b == 0 || a == b {
		t.Fatalf("entry failed: streams 0 and 1 on targets %d and %d, want two other members", a, b)
	}
	fail(1, time.Second)
	if got := l.pick(0, now); got != 2 {
		t.Fatalf("entry and member-b failed: target %d, want member-c (2)", got)
	}
	fail(2, time.Second)
	if got := l.pick(0, now); got != 0 {
		t.Fatalf("every member failed: target %d, want the entry", got)
	}
	fail(0, failoverHold)
	if got := l.pick(1, now); got != 0 {
		t.Fatalf("entry quiet for failoverHold: target %d, want the entry", got)
	}
}

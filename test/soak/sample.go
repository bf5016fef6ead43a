package main

// Process samples: RSS and open fds from /proc/PID, Go heap and goroutines
// from the process's own admin /metrics (go_memstats_heap_alloc_bytes,
// go_goroutines), and the flatness check over them.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

type sample struct {
	at     time.Time
	pid    int
	start  int     // which run of the process (1 = first start)
	rss    float64 // bytes; -1 unknown
	heap   float64 // bytes; -1 unknown
	gor    float64 // -1 unknown
	fds    float64 // -1 unknown
	height uint64  // appliances: ledger height from /status
}

type sampler struct {
	cl *cluster

	mu     sync.Mutex // guards series
	series map[string][]sample
}

func newSampler(cl *cluster) *sampler { return &sampler{cl: cl, series: map[string][]sample{}} }

// take samples every running process, records and returns the samples.
func (s *sampler) take(ctx context.Context) map[string]sample {
	out := map[string]sample{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range s.cl.procs {
		pid, starts, _, running := p.current()
		if !running {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := sample{at: time.Now(), pid: pid, start: starts, rss: -1, heap: -1, gor: -1, fds: -1}
			x.rss = procRSS(pid)
			if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
				x.fds = float64(len(ents))
			}
			if body, err := s.cl.getRaw(ctx, p, "/metrics"); err == nil {
				m := parseMetrics(body, "go_memstats_heap_alloc_bytes", "go_goroutines")
				x.heap, x.gor = m[0], m[1]
			}
			if !p.relay {
				if st, err := s.cl.status(ctx, p); err == nil {
					x.height = st.Ledger.Height
				}
			}
			mu.Lock()
			out[p.name] = x
			mu.Unlock()
		}()
	}
	wg.Wait()
	s.mu.Lock()
	for n, x := range out {
		s.series[n] = append(s.series[n], x)
	}
	s.mu.Unlock()
	return out
}

func (s *sampler) all(name string) []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample(nil), s.series[name]...)
}

// procRSS is VmRSS of /proc/PID/status in bytes, -1 if unknown.
func procRSS(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(v) // "12345 kB"
			if len(f) >= 1 {
				if kb, err := strconv.ParseFloat(f[0], 64); err == nil {
					return kb * 1024
				}
			}
		}
	}
	return -1
}

// parseMetrics returns the values of the unlabelled Prometheus samples
// names (-1 when absent), in order.
func parseMetrics(body []byte, names ...string) []float64 {
	out := make([]float64, len(names))
	for i := range out {
		out[i] = -1
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		for i, n := range names {
			if name == n {
				if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
					out[i] = v
				}
			}
		}
	}
	return out
}

func mb(b float64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f", b/(1<<20))
}

func num(v float64) string {
	if v < 0 {
		return "?"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// flat is the flatness verdict of one quantity of one process.
type flat struct {
	what      string
	mid, last float64 // means of the middle and last thirds
	ok        bool
}

// flatWarmup is left out of the flatness check after each start: a
// restarted member catches up and its heap grows to its working size in
// that time. A soak run once failed on a member restarted 2 minutes before
// the end (+11%, peak as the members never restarted) while every process
// that had run for longer was flat.
const flatWarmup = 2 * time.Minute

// flatness checks RSS, goroutines and fds of one process over its longest
// run (between two starts), after that run's first flatWarmup: the last
// third's mean at most 10% above the middle third's. With faults every
// minute or so a process's last run is often all warm-up, while an earlier
// one was long enough to judge. fl == nil with n < 6 means too few samples
// to say.
func flatness(ss []sample) (fl []flat, n int) {
	runs := map[int][]sample{}
	from := map[int]time.Time{}
	for _, x := range ss {
		if _, ok := from[x.start]; !ok {
			from[x.start] = x.at.Add(flatWarmup)
		}
		if !x.at.Before(from[x.start]) {
			runs[x.start] = append(runs[x.start], x)
		}
	}
	starts := make([]int, 0, len(runs))
	for start := range runs {
		starts = append(starts, start)
	}
	sort.Ints(starts)
	var run []sample
	for _, start := range starts { // ties: the later run
		if len(runs[start]) >= len(run) {
			run = runs[start]
		}
	}
	n = len(run)
	if n < 6 {
		return nil, n
	}
	mid, end := run[n/3:2*n/3], run[2*n/3:]
	for _, q := range []struct {
		what string
		get  func(sample) float64
	}{{"rss", func(x sample) float64 { return x.rss }}, {"goroutines", func(x sample) float64 { return x.gor }},
		{"fds", func(x sample) float64 { return x.fds }}} {
		m, l := mean(mid, q.get), mean(end, q.get)
		fl = append(fl, flat{what: q.what, mid: m, last: l, ok: m >= 0 && l >= 0 && l <= 1.10*m})
	}
	return fl, n
}

func mean(ss []sample, get func(sample) float64) float64 {
	var sum float64
	var n int
	for _, x := range ss {
		if v := get(x); v >= 0 {
			sum += v
			n++
		}
	}
	if n == 0 {
		return -1
	}
	return sum / float64(n)
}

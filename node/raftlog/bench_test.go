package raftlog

// Benchmarks. BenchmarkReplicate runs the leader (node 1) in this process
// and the two followers in a child process (this test binary re-executed),
// so that getrusage(RUSAGE_SELF) around the timed loop measures the leader's
// CPU (plus the load generator's goroutines, which only call ProposeWait).
// The child reports its own CPU for the same window. Baseline:
// BenchmarkFsyncAppend writes the same entries to a plain file with fsync.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const benchChildEnv = "RAFTLOG_BENCH_CHILD"

// nameDialer resolves peer names ("n1") to the current loopback address of
// that node's listener; a stopped node has none (dial fails like a dead host).
type nameDialer struct {
	mu    sync.Mutex
	addrs map[string]string
}

func (d *nameDialer) set(name, addr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if addr == "" {
		delete(d.addrs, name)
	} else {
		d.addrs[name] = addr
	}
}

func (d *nameDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	real, ok := d.addrs[addr]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("test network: %s is down", addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, real)
}

var _ Dialer = (*nameDialer)(nil)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchConfig(id uint64, dir string, d Dialer, ln net.Listener, apply func(context.Context, Commit) error) Config {
	return Config{
		ID: id, Cluster: "bench", Dir: dir, Dialer: d, Listener: ln,
		Peers:        []Peer{{ID: 1, Addr: "n1"}, {ID: 2, Addr: "n2"}, {ID: 3, Addr: "n3"}},
		TickInterval: 20 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
		SnapshotEvery: 20000, Apply: apply,
	}
}

// benchChild runs followers 2 and 3 on the listeners passed as fds 3 and 4.
// Protocol on stdin/stdout: prints "ready"; on "mark" records its CPU time;
// on EOF prints "cpu <ns since mark>" and exits.
func benchChild() {
	d := &nameDialer{addrs: map[string]string{}}
	for _, kv := range strings.Split(os.Getenv(benchChildEnv), ",") {
		name, addr, _ := strings.Cut(kv, "=")
		d.set(name, addr)
	}
	dir := os.Getenv("RAFTLOG_BENCH_DIR")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var nodes []*Node
	for i, id := range []uint64{2, 3} {
		ln, err := net.FileListener(os.NewFile(uintptr(3+i), "ln"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		cfg := benchConfig(id, filepath.Join(dir, fmt.Sprintf("n%d", id)), d, ln,
			func(context.Context, Commit) error { return nil })
		cfg.ElectionTicks = 100 // let the parent's node 1 win the election
		n, err := New(cfg)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		nodes = append(nodes, n)
		wg.Add(1)
		go func() { defer wg.Done(); n.Run(ctx) }()
	}
	fmt.Println("ready")
	var mark time.Duration
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "mark" {
			mark = cpuTime()
		}
	}
	fmt.Println("cpu", int64(cpuTime()-mark))
	cancel()
	wg.Wait()
	for _, n := range nodes {
		n.Close()
	}
	os.Exit(0)
}

func BenchmarkReplicate(b *testing.B) {
	for _, tc := range []struct{ size, conc int }{
		{100, 16}, {100, 256}, {100, 1024},
		{1024, 16}, {1024, 256}, {1024, 1024},
		{64 << 10, 16}, {64 << 10, 64}, // block-sized entries: the ordering node proposes whole blocks
	} {
		b.Run(fmt.Sprintf("entry=%dB/proposers=%d", tc.size, tc.conc), func(b *testing.B) { benchReplicate(b, tc.size, tc.conc) })
	}
}

func benchReplicate(b *testing.B, size, conc int) {
	dir := b.TempDir()
	d := &nameDialer{addrs: map[string]string{}}
	var files []*os.File
	for i := 2; i <= 3; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			b.Fatal(err)
		}
		ln.Close()
		files = append(files, f)
		d.set(fmt.Sprintf("n%d", i), ln.Addr().String())
	}
	ln1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	d.set("n1", ln1.Addr().String())
	var addrs []string
	for _, n := range []string{"n1", "n2", "n3"} {
		addrs = append(addrs, n+"="+d.addrs[n])
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+strings.Join(addrs, ","), "RAFTLOG_BENCH_DIR="+dir)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	out := bufio.NewScanner(stdout)
	defer func() {
		stdin.Close()
		io.Copy(io.Discard, stdout)
		cmd.Wait()
	}()
	if !out.Scan() || out.Text() != "ready" {
		b.Fatalf("follower process: %q", out.Text())
	}

	var applied atomic.Int64
	n, err := New(benchConfig(1, filepath.Join(dir, "n1"), d, ln1, func(_ context.Context, c Commit) error {
		applied.Add(int64(len(c.Entries)))
		return nil
	}))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done; n.Close() }()
	deadline := time.Now().Add(20 * time.Second)
	for n.Leader() != 1 {
		if time.Now().After(deadline) {
			b.Fatalf("node 1 did not become leader (leader %d)", n.Leader())
		}
		time.Sleep(10 * time.Millisecond)
	}
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	fmt.Fprintln(stdin, "mark")
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, err := n.ProposeWait(ctx, payload); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	stdin.Close()
	var childCPU int64
	for out.Scan() {
		if v, ok := strings.CutPrefix(out.Text(), "cpu "); ok {
			childCPU, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "leader-cpu-µs/entry")
	b.ReportMetric(float64(childCPU)/1e3/float64(b.N)/2, "follower-cpu-µs/entry")
}

// BenchmarkFsyncAppend is the baseline: the same entries appended to one
// file, fsync after every batch of the given size.
func BenchmarkFsyncAppend(b *testing.B) {
	for _, size := range []int{100, 1024, 64 << 10} {
		for _, batch := range []int{1, 16, 256} {
			if size > 1024 && batch > 16 {
				continue
			}
			b.Run(fmt.Sprintf("entry=%dB/batch=%d", size, batch), func(b *testing.B) {
				f, err := os.Create(filepath.Join(b.TempDir(), "append"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				payload := make([]byte, size)
				buf := make([]byte, 0, batch*(size+recordHeaderLen+1))
				b.SetBytes(int64(size))
				b.ResetTimer()
				cpu0 := cpuTime()
				start := time.Now()
				for i := 0; i < b.N; {
					buf = buf[:0]
					for j := 0; j < batch && i < b.N; j++ {
						buf = appendRecord(buf, recEntry, payload)
						i++
					}
					if _, err := f.Write(buf); err != nil {
						b.Fatal(err)
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "entries/s")
				b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/entry")
			})
		}
	}
}

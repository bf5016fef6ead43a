// Package lifecycletest checks the lifecycle every long-lived part follows
// (STYLE.md, One lifecycle): New does no I/O and starts nothing, Run(ctx)
// blocks until ctx ends, Close is idempotent.
package lifecycletest

import (
	"context"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// wait bounds how long Start and Wait wait.
const wait = 30 * time.Second

// Quiet runs fn (a constructor) and fails t if a goroutine it started
// still runs afterwards, or if it left more files or sockets open.
func Quiet(t testing.TB, what string, fn func()) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	fds := openFDs(t)
	fn()
	if err := goleak.Find(before); err != nil {
		t.Errorf("%s started goroutines: %v", what, err)
	}
	if n := openFDs(t); n > fds {
		t.Errorf("%s opened %d files or sockets", what, n-fds)
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(fds)
}

// Running is a Run started by Start.
type Running struct {
	t      testing.TB
	cancel context.CancelFunc
	errc   chan error
	before goleak.Option
}

// Start calls run(ctx) on a goroutine and waits until up is closed; it
// fails t if run returns first or up is not closed in time. Goroutines
// running before Start are not counted as left over by Wait.
func Start(t testing.TB, run func(context.Context) error, up <-chan struct{}) *Running {
	t.Helper()
	r := &Running{t: t, errc: make(chan error, 1), before: goleak.IgnoreCurrent()}
	var ctx context.Context
	ctx, r.cancel = context.WithCancel(context.Background())
	t.Cleanup(r.cancel)
	go func() { r.errc <- run(ctx) }()
	select {
	case <-up:
	case err := <-r.errc:
		t.Fatalf("Run returned before it was up: %v", err)
	case <-time.After(wait):
		t.Fatalf("not up within %v", wait)
	}
	return r
}

// Stop ends Run's ctx and Waits.
func (r *Running) Stop() {
	r.t.Helper()
	r.cancel()
	r.Wait()
}

// Wait waits for Run to return, fails t unless it returned nil, and checks
// that every goroutine started since Start has ended.
func (r *Running) Wait() {
	r.t.Helper()
	select {
	case err := <-r.errc:
		if err != nil {
			r.t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(wait):
		r.t.Fatalf("Run did not return within %v", wait)
	}
	if err := goleak.Find(r.before); err != nil {
		r.t.Errorf("goroutines left after Run returned: %v", err)
	}
}

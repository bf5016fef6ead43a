package dirwatch_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/memberd/memberd/internal/dirwatch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// read is one call of the ReadFunc: why, when, and what the watched file
// held then.
type read struct {
	why     dirwatch.Reason
	at      time.Time
	content string
}

// harness runs a Watcher on a real folder and records every read.
type harness struct {
	t     *testing.T
	dir   string
	w     *dirwatch.Watcher
	reads chan read
	done  chan error
	stop  context.CancelFunc
	// retry, when set, is returned by the next read.
	retry chan time.Time
}

// start runs a Watcher on dir (created if missing) with cfg; reads record
// the content of dir/file (followed through symlinks).
func start(t *testing.T, dir string, cfg dirwatch.Config) *harness {
	t.Helper()
	h := &harness{t: t, dir: dir, reads: make(chan read, 1000), done: make(chan error, 1), retry: make(chan time.Time, 1)}
	cfg.Dir = dir
	cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, nil))
	w, err := dirwatch.New(cfg, func(why dirwatch.Reason) time.Time {
		b, _ := os.ReadFile(filepath.Join(dir, "file"))
		h.reads <- read{why: why, at: time.Now(), content: string(b)}
		select {
		case at := <-h.retry:
			return at
		default:
			return time.Time{}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	h.w = w
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() { h.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; !errors.Is(err, context.Canceled) && !errors.Is(err, dirwatch.ErrClosed) {
			t.Errorf("Run: %v", err)
		}
	})
	h.expect(dirwatch.Start, 5*time.Second)
	return h
}

// expect waits for a read for why, skipping reads for other reasons, and
// returns it.
func (h *harness) expect(why dirwatch.Reason, within time.Duration) read {
	h.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case r := <-h.reads:
			if r.why == why {
				return r
			}
			h.t.Logf("read for %s (waiting for %s)", r.why, why)
		case <-deadline:
			h.t.Fatalf("no read for %s within %v", why, within)
		}
	}
}

// quiet fails if any read happens within d.
func (h *harness) quiet(d time.Duration) {
	h.t.Helper()
	select {
	case r := <-h.reads:
		h.t.Fatalf("unexpected read for %s", r.why)
	case <-time.After(d):
	}
}

// drain returns the reads made within d.
func (h *harness) drain(d time.Duration) []read {
	var out []read
	deadline := time.After(d)
	for {
		select {
		case r := <-h.reads:
			out = append(out, r)
		case <-deadline:
			return out
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  dirwatch.Config
		ok   bool
	}{
		{"defaults", dirwatch.Config{Dir: "/x"}, true},
		{"no dir", dirwatch.Config{}, false},
		{"negative debounce", dirwatch.Config{Dir: "/x", Debounce: -1}, false},
		{"negative ceiling", dirwatch.Config{Dir: "/x", MaxDelay: -1}, false},
		{"negative resync", dirwatch.Config{Dir: "/x", Resync: -1}, false},
		{"negative rearm", dirwatch.Config{Dir: "/x", RearmEvery: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dirwatch.New(tc.cfg, func(dirwatch.Reason) time.Time { return time.Time{} })
			if (err == nil) != tc.ok {
				t.Fatalf("New: %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if _, err := dirwatch.New(dirwatch.Config{Dir: "/x"}, nil); err == nil {
		t.Fatal("New accepted a nil ReadFunc")
	}
}

// TestLifecycle: New touches nothing (a folder that does not exist is
// fine, no goroutine starts), Close is idempotent and ends Run, Run runs
// once.
func TestLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	missing := filepath.Join(t.TempDir(), "not-yet")
	called := false
	w, err := dirwatch.New(dirwatch.Config{Dir: missing}, func(dirwatch.Reason) time.Time { called = true; return time.Time{} })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New touched the folder: %v", err)
	}
	goleak.VerifyNone(t, goleak.IgnoreCurrent()) // New started nothing
	w.Close()
	w.Close()
	if err := w.Run(context.Background()); !errors.Is(err, dirwatch.ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
	if err := w.Run(context.Background()); err == nil || errors.Is(err, dirwatch.ErrClosed) {
		t.Fatalf("second Run: %v, want 'Run called twice'", err)
	}
	if called {
		t.Fatal("read after Close")
	}

	// Close while running ends Run with ErrClosed; Close from inside the
	// ReadFunc does not deadlock.
	dir := t.TempDir()
	var w2 *dirwatch.Watcher
	w2, err = dirwatch.New(dirwatch.Config{Dir: dir}, func(why dirwatch.Reason) time.Time {
		if why == dirwatch.Request {
			w2.Close()
		}
		return time.Time{}
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w2.Run(context.Background()) }()
	w2.Trigger()
	select {
	case err := <-done:
		if !errors.Is(err, dirwatch.ErrClosed) {
			t.Fatalf("Run: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close from the ReadFunc did not end Run")
	}
}

// TestRenames: files replaced the ways editors and deploy tools do are
// each read once, after the debounce, with the new content.
func TestRenames(t *testing.T) {
	// The debounce leaves room for a loaded machine between the steps of
	// one replacement.
	h := start(t, t.TempDir(), dirwatch.Config{Debounce: 150 * time.Millisecond, Resync: time.Hour})
	path := filepath.Join(h.dir, "file")
	for _, tc := range []struct {
		name    string
		replace func()
	}{
		{"write in place", func() { write(t, path, "in place") }},
		{"rename over (deploy tools)", func() {
			write(t, path+".tmp", "renamed over")
			if err := os.Rename(path+".tmp", path); err != nil {
				t.Fatal(err)
			}
		}},
		{"vim (backup, write, delete backup)", func() {
			if err := os.Rename(path, path+"~"); err != nil {
				t.Fatal(err)
			}
			write(t, path, "vim")
			if err := os.Remove(path + "~"); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename in from elsewhere", func() {
			other := filepath.Join(t.TempDir(), "x")
			write(t, other, "moved in")
			if err := os.Rename(other, path); err != nil {
				// another file system (tmpfs): fall back to copy
				write(t, path, "moved in")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.replace()
			r := h.expect(dirwatch.Change, 5*time.Second)
			h.quiet(300 * time.Millisecond) // one read per change
			want := map[string]string{"write in place": "in place", "rename over (deploy tools)": "renamed over", "vim (backup, write, delete backup)": "vim", "rename in from elsewhere": "moved in"}[tc.name]
			if r.content != want {
				t.Fatalf("read %q, want %q", r.content, want)
			}
		})
	}
}

// TestSymlinkSwap: a Kubernetes ConfigMap volume replaces its content by
// renaming a new "..data" symlink over the old one; file is a symlink
// through ..data.
func TestSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mustSymlink := func(old, new string) {
		t.Helper()
		if err := os.Symlink(old, new); err != nil {
			t.Fatal(err)
		}
	}
	version := func(name, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "file"), content)
	}
	version("..2026_12_07_01", "v1")
	mustSymlink("..2026_12_07_01", filepath.Join(dir, "..data"))
	mustSymlink("..data/file", filepath.Join(dir, "file"))

	h := start(t, dir, dirwatch.Config{Debounce: 50 * time.Millisecond, Resync: time.Hour})
	version("..2026_12_07_02", "v2")
	mustSymlink("..2026_12_07_02", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_12_07_01")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := h.expect(dirwatch.Change, time.Until(deadline))
		if r.content == "v2" {
			return
		}
		t.Logf("read %q after the swap", r.content)
	}
}

// TestDebounceAndCeiling: a short burst is read once, after it ends; a
// burst that never goes quiet is read at least every MaxDelay, and not on
// every event.
func TestDebounceAndCeiling(t *testing.T) {
	const debounce, ceiling = 100 * time.Millisecond, 400 * time.Millisecond
	h := start(t, t.TempDir(), dirwatch.Config{Debounce: debounce, MaxDelay: ceiling, Resync: time.Hour})
	path := filepath.Join(h.dir, "file")

	t.Run("short burst", func(t *testing.T) {
		for i := range 10 {
			write(t, path, strings.Repeat("x", i+1))
		}
		r := h.expect(dirwatch.Change, 5*time.Second)
		if r.content != strings.Repeat("x", 10) {
			t.Fatalf("read %q, want the last write", r.content)
		}
		h.quiet(3 * debounce)
	})

	t.Run("endless burst", func(t *testing.T) {
		const every, total = 20 * time.Millisecond, 2 * time.Second
		begin := time.Now()
		stop := make(chan struct{})
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(every):
				}
				_ = os.WriteFile(path, []byte{byte('a' + i%26)}, 0o644)
			}
		}()
		reads := h.drain(total)
		close(stop)
		<-writerDone
		var changes []time.Time
		for _, r := range reads {
			if r.why == dirwatch.Change {
				changes = append(changes, r.at)
			}
		}
		// Writes come 5× faster than the debounce: without the ceiling no
		// read at all; with it about total/ceiling = 5; never one per
		// write (100).
		t.Logf("%d reads during a %v burst of writes every %v (ceiling %v)", len(changes), total, every, ceiling)
		if len(changes) < 2 || len(changes) > 12 {
			t.Fatalf("%d reads during the burst, want about %d", len(changes), total/ceiling)
		}
		if first := changes[0].Sub(begin); first > ceiling+every+time.Second {
			t.Fatalf("first read %v after the burst began, ceiling %v", first, ceiling)
		}
		h.expect(dirwatch.Change, 5*time.Second) // the tail of the burst
	})
}

// TestFolderRemovedAndRecreated: the watch follows the path: a folder
// removed (or renamed away) and created again is watched again, and
// changes in the new one are read.
func TestFolderRemovedAndRecreated(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remove func(dir string) error
	}{
		{"removed", os.RemoveAll},
		{"renamed away", func(dir string) error { return os.Rename(dir, dir+".old") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "watched")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			h := start(t, dir, dirwatch.Config{Debounce: 20 * time.Millisecond, Resync: time.Hour, RearmEvery: 50 * time.Millisecond})
			if err := tc.remove(dir); err != nil {
				t.Fatal(err)
			}
			h.expect(dirwatch.Change, 5*time.Second) // the owner sees it gone
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			h.expect(dirwatch.Rearm, 5*time.Second)
			write(t, filepath.Join(dir, "file"), "back")
			if r := h.expect(dirwatch.Change, 5*time.Second); r.content != "back" {
				t.Fatalf("read %q in the new folder", r.content)
			}
			if tc.name == "renamed away" { // the old inode is not watched any more
				write(t, filepath.Join(dir+".old", "file"), "old")
				h.quiet(300 * time.Millisecond)
			}
		})
	}
}

// TestMissingAtStart: a folder that does not exist yet is read at start
// and watched once it appears.
func TestMissingAtStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	h := start(t, dir, dirwatch.Config{Resync: time.Hour, RearmEvery: 50 * time.Millisecond})
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.expect(dirwatch.Rearm, 5*time.Second)
	write(t, filepath.Join(dir, "file"), "x")
	h.expect(dirwatch.Change, 5*time.Second)
}

// TestTriggers: Trigger, a retry time asked by the ReadFunc, the resync
// period and SIGHUP each cause a read.
func TestTriggers(t *testing.T) {
	// Our own registration keeps SIGHUP from killing the test process
	// should the watcher's registration be gone.
	keep := make(chan os.Signal, 1)
	signal.Notify(keep, syscall.SIGHUP)
	defer signal.Stop(keep)
	h := start(t, t.TempDir(), dirwatch.Config{Debounce: time.Hour, Resync: 300 * time.Millisecond, ReloadOnSIGHUP: true})

	h.retry <- time.Now().Add(100 * time.Millisecond)
	h.w.Trigger()
	h.expect(dirwatch.Request, 5*time.Second)
	h.expect(dirwatch.Retry, 5*time.Second)
	h.expect(dirwatch.Resync, 5*time.Second)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	h.expect(dirwatch.Signal, 5*time.Second)
}

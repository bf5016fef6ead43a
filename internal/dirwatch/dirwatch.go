// Package dirwatch is memberd's one watched-folder piece: it tells its owner
// when to read a folder again, and leaves the reading to the owner.
//
// The owner (policy.Watcher, identity.Provider) gives a ReadFunc that reads
// the whole folder and applies what it finds as one transaction. Watcher
// calls it, always from the goroutine running Run, one call at a time:
//
//   - once when Run has armed the watch (Start), so that nothing written
//     between the owner's first read and the watch is missed;
//   - after file events, once the folder has been quiet for Debounce, but no
//     later than MaxDelay after the first event of a burst (Change), so a
//     folder that never goes quiet is still read;
//   - every Resync (Resync), which also catches what events cannot say:
//     certificates becoming valid, lost events;
//   - on SIGHUP when ReloadOnSIGHUP is set (Signal), and on Trigger (Request);
//   - at the time the previous call asked for (Retry), e.g. a file still
//     being written;
//   - when a removed folder is back and watched again (Rearm).
//
// The folder itself is watched, not the files in it, so files may be
// replaced in any way: written in place, renamed over (editors, deploy
// tools), or swapped through a symlink (Kubernetes ConfigMap "..data"). A
// removed or renamed folder is looked for again every RearmEvery until it
// is back.
//
// Lifecycle: New does no I/O and starts nothing; Run(ctx) arms the watch
// and blocks; Close is idempotent and makes Run return.
package dirwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Reason says why the folder is read.
type Reason string

// Reasons a ReadFunc is called for (stable, used as log values).
const (
	Start   Reason = "start"
	Change  Reason = "change"
	Resync  Reason = "resync"
	Signal  Reason = "sighup"
	Request Reason = "request"
	Retry   Reason = "retry"
	Rearm   Reason = "rearm"
)

// ReadFunc reads the folder. It returns when it wants to be called again
// even without an event (zero: no such wish); a later time replaces an
// earlier wish. It runs on Run's goroutine: it must not call Run, and a
// slow ReadFunc delays the next read.
type ReadFunc func(why Reason) (retryAt time.Time)

// Config configures a Watcher. The zero value of every optional field is
// the documented default; the caller's copy is never modified.
type Config struct {
	// Dir is the folder to watch (required).
	Dir string
	// Name says what the folder is in log lines (default "folder"), e.g.
	// "policy folder".
	Name string
	// Debounce is the quiet time after the last file event before the
	// folder is read (default 20ms).
	Debounce time.Duration
	// MaxDelay is the ceiling: a burst of events delays the read by at most
	// this much after its first event (default max(10×Debounce, 200ms)).
	MaxDelay time.Duration
	// Resync is the period of reads without events (default 30s).
	Resync time.Duration
	// RearmEvery is how often a removed folder is looked for (default
	// min(Resync, 1s)).
	RearmEvery time.Duration
	// ReloadOnSIGHUP makes Run read the folder on SIGHUP.
	ReloadOnSIGHUP bool
	// Logger receives watch errors and folder removal (nil: discard).
	Logger *slog.Logger
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Dir == "" {
		return errors.New("dirwatch: Dir (the folder to watch) is required")
	}
	if c.Debounce < 0 || c.MaxDelay < 0 || c.Resync < 0 || c.RearmEvery < 0 {
		return fmt.Errorf("dirwatch %s: Debounce, MaxDelay, Resync and RearmEvery must not be negative", c.Dir)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "folder"
	}
	if c.Debounce == 0 {
		c.Debounce = 20 * time.Millisecond
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = max(10*c.Debounce, 200*time.Millisecond)
	}
	if c.Resync == 0 {
		c.Resync = 30 * time.Second
	}
	if c.RearmEvery == 0 {
		c.RearmEvery = min(c.Resync, time.Second)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Dir = filepath.Clean(c.Dir)
	return c
}

// ErrClosed is returned by Run once the Watcher is closed.
var ErrClosed = errors.New("dirwatch: closed")

// Watcher watches one folder. Create with New, then Run.
type Watcher struct {
	c    Config   // immutable
	read ReadFunc // immutable

	request   chan struct{} // Trigger; capacity 1
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	running   atomic.Bool
}

// New checks cfg and returns a Watcher. It does no I/O and starts nothing.
func New(cfg Config, read ReadFunc) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if read == nil {
		return nil, fmt.Errorf("dirwatch %s: a ReadFunc is required", cfg.Dir)
	}
	return &Watcher{c: cfg.withDefaults(), read: read, request: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

// Trigger asks Run to read the folder now (as SIGHUP does). It never blocks;
// requests made while one is pending are merged.
func (w *Watcher) Trigger() {
	select {
	case w.request <- struct{}{}:
	default:
	}
}

// Close makes Run return ErrClosed. It is idempotent, does not wait for Run,
// and may be called from the ReadFunc.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() { close(w.done) })
	return nil
}

// stoppedTimer returns a timer that has not been started.
func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// Run arms the watch, reads the folder (Start) and then reads it again
// whenever it may have changed, until ctx is done (it returns ctx.Err()) or
// Close is called (ErrClosed). It fails at once if the watch cannot be
// created (inotify limits) or Run was called before, and returns ErrClosed
// at once, without reading, if Close came first. A folder missing at
// start is not an error: it is read (the ReadFunc sees it missing) and
// watched once it appears.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return fmt.Errorf("dirwatch %s: Run called twice", w.c.Dir)
	}
	select {
	case <-w.done:
		return ErrClosed
	default:
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("%s %s: cannot watch: %w (raise fs.inotify.max_user_instances?)", w.c.Name, w.c.Dir, err)
	}
	defer fw.Close()
	var hup chan os.Signal
	if w.c.ReloadOnSIGHUP {
		hup = make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	l := loop{w: w, fw: fw, debounce: stoppedTimer(), retry: stoppedTimer(), rearm: stoppedTimer()}
	defer l.debounce.Stop()
	defer l.retry.Stop()
	defer l.rearm.Stop()
	resync := time.NewTicker(w.c.Resync)
	defer resync.Stop()

	l.arm()
	l.readFor(Start)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.done:
			return ErrClosed
		case ev, ok := <-fw.Events:
			if !ok {
				return fmt.Errorf("%s %s: the watch was closed", w.c.Name, w.c.Dir)
			}
			l.event(ev)
		case err, ok := <-fw.Errors:
			if !ok {
				return fmt.Errorf("%s %s: the watch was closed", w.c.Name, w.c.Dir)
			}
			// Overflow or similar: events were lost; read everything.
			w.c.Logger.Warn(w.c.Name+" watch error; re-reading the folder", "dir", w.c.Dir, "err", err)
			l.pushBack()
		case <-l.debounce.C:
			l.first = time.Time{}
			l.readFor(Change)
		case <-l.retry.C:
			l.readFor(Retry)
		case <-w.request:
			l.readFor(Request)
		case <-hup:
			w.c.Logger.Info("SIGHUP: re-reading the "+w.c.Name, "dir", w.c.Dir)
			l.readFor(Signal)
		case <-resync.C:
			l.readFor(Resync)
		case <-l.rearm.C:
			if l.arm() {
				l.readFor(Rearm)
			}
		}
	}
}

// loop is the state of one Run, owned by its goroutine.
type loop struct {
	w        *Watcher
	fw       *fsnotify.Watcher
	watching bool
	first    time.Time // first event of the current burst; zero when quiet
	debounce *time.Timer
	retry    *time.Timer
	rearm    *time.Timer
}

// arm watches the folder; when it cannot, it tries again after RearmEvery.
// It reports whether the folder is watched now.
func (l *loop) arm() bool {
	if err := l.fw.Add(l.w.c.Dir); err != nil {
		l.rearm.Reset(l.w.c.RearmEvery)
		return false
	}
	l.watching = true
	return true
}

// event handles one fsnotify event.
func (l *loop) event(ev fsnotify.Event) {
	if filepath.Clean(ev.Name) == l.w.c.Dir && ev.Has(fsnotify.Remove|fsnotify.Rename) && l.watching {
		// Removed, or renamed away (then the watch follows the old inode:
		// drop it and wait for a folder at the path again).
		l.watching = false
		_ = l.fw.Remove(l.w.c.Dir)
		l.w.c.Logger.Warn(l.w.c.Name+" removed; keeping what was read and waiting for it to come back", "dir", l.w.c.Dir)
		l.rearm.Reset(l.w.c.RearmEvery)
	}
	l.pushBack()
}

// pushBack (re)starts the debounce, bounded by the ceiling.
func (l *loop) pushBack() {
	now := time.Now()
	if l.first.IsZero() {
		l.first = now
	}
	l.debounce.Reset(min(l.w.c.Debounce, max(0, l.first.Add(l.w.c.MaxDelay).Sub(now))))
}

func (l *loop) readFor(why Reason) {
	if at := l.w.read(why); !at.IsZero() {
		l.retry.Reset(time.Until(at))
	}
}

package policy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is one appliance's policy folder, state folder and watcher.
type env struct {
	t     *testing.T
	c     *policytest.Consortium
	g     *policy.Policy
	dir   string
	state string
	reg   *prometheus.Registry
	w     *policy.Watcher
	stop  func()

	mu     sync.Mutex
	events []string // "sub:old->new" in notification order
	notes  chan uint64
}

type tlog struct{ t *testing.T }

func (l tlog) Write(p []byte) (int, error) { l.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

func newEnv(t *testing.T, n int) *env {
	e := &env{t: t, c: policytest.New(t, n), dir: t.TempDir(), state: t.TempDir(), notes: make(chan uint64, 1000)}
	e.g = e.c.Genesis(t)
	e.write("v1.yaml", e.g.Marshal())
	return e
}

func (e *env) opts() policy.Options {
	e.reg = prometheus.NewRegistry()
	return policy.Options{Dir: e.dir, StateDir: e.state, Genesis: e.g.Hash(), Registerer: e.reg,
		Logger:   slog.New(slog.NewTextHandler(tlog{e.t}, nil)),
		Debounce: 20 * time.Millisecond, Resync: time.Hour}
}

// start creates the watcher, subscribes twice, and runs it until cleanup.
func (e *env) start(o policy.Options) {
	e.t.Helper()
	w, err := policy.NewWatcher(o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.w = w
	for _, name := range []string{"a", "b"} {
		name := name
		w.Subscribe(func(old, new *policy.Policy, d *policy.Diff) {
			if d.From != old.Version() || d.To != new.Version() {
				e.t.Errorf("diff %d->%d for %d->%d", d.From, d.To, old.Version(), new.Version())
			}
			e.mu.Lock()
			e.events = append(e.events, fmt.Sprintf("%s:%d->%d", name, old.Version(), new.Version()))
			e.mu.Unlock()
			if name == "b" {
				e.notes <- new.Version()
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("Run: %v", err)
			}
		})
	}
	e.t.Cleanup(e.stop)
}

func (e *env) write(name string, data []byte) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name), data, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// rename writes data to a hidden temporary file and renames it into place.
func (e *env) rename(name string, data []byte) {
	e.t.Helper()
	tmp := filepath.Join(e.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.dir, name)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) waitVersion(v uint64) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	suffix := fmt.Sprintf("->%d", v)
	for e.w.Current().Version() != v || !strings.HasSuffix(e.eventLog(), suffix) {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for version %d; current %d", v, e.w.Current().Version())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// settle gives the watcher time to react, then checks nothing changed.
func (e *env) stays(v uint64) {
	e.t.Helper()
	e.w.Reload()
	time.Sleep(150 * time.Millisecond)
	if got := e.w.Current().Version(); got != v {
		e.t.Fatalf("version %d, want it to stay %d", got, v)
	}
}

func (e *env) rejected(reason string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "policy_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func (e *env) gauge(name string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	e.t.Fatalf("no gauge %s", name)
	return 0
}

func (e *env) waitRejected(reason string, n float64) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.rejected(reason) < n {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %v rejections with reason %s (have %v)", n, reason, e.rejected(reason))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) eventLog() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.events, " ")
}

// chain makes versions 2..n, each a metadata change signed by m1 and m2;
// index i holds version i (index 0 is nil).
func (e *env) chain(n int) []*policy.Policy {
	out := []*policy.Policy{nil, e.g}
	for v := 2; v <= n; v++ {
		out = append(out, e.c.Next(e.t, out[len(out)-1], describe(fmt.Sprintf("v%d", v)), "m1", "m2"))
	}
	return out
}

// TestWatcherAppliesInOrder: write-then-rename and write-in-place, each
// version notified exactly once, to every subscriber in subscription order.
func TestWatcherAppliesInOrder(t *testing.T) {
	e := newEnv(t, 3)
	e.start(e.opts())
	vs := e.chain(4)
	e.rename("v2.yaml", vs[2].Marshal())
	e.waitVersion(2)
	e.write("v3.yaml", vs[3].Marshal())
	e.waitVersion(3)
	e.rename("v4.yaml", vs[4].Marshal())
	e.waitVersion(4)
	e.stays(4)
	if got, want := e.eventLog(), "a:1->2 b:1->2 a:2->3 b:2->3 a:3->4 b:3->4"; got != want {
		t.Fatalf("notifications %q, want %q", got, want)
	}
	st, err := policy.LoadState(e.state)
	if err != nil || st.Hash() != vs[4].Hash() {
		t.Fatalf("state: %v", err)
	}
}

// TestWatcherCatchUp: several versions landing at once apply link by link,
// each notified.
func TestWatcherCatchUp(t *testing.T) {
	e := newEnv(t, 3)
	vs := e.chain(5)
	e.start(e.opts())
	for v := 5; v >= 2; v-- { // newest first, to be sure order comes from the chain
		e.rename(fmt.Sprintf("v%d.yaml", v), vs[v].Marshal())
	}
	e.waitVersion(5)
	e.stays(5)
	if got, want := e.eventLog(), "a:1->2 b:1->2 a:2->3 b:2->3 a:3->4 b:3->4 a:4->5 b:4->5"; got != want {
		t.Fatalf("notifications %q, want %q", got, want)
	}
	// Catch-up at start: a new appliance with the whole chain in its folder.
	e2 := newEnv(t, 1)
	e2.c, e2.g, e2.dir = e.c, e.g, e.dir
	w, err := policy.NewWatcher(e2.opts())
	if err != nil || w.Current().Version() != 5 {
		t.Fatalf("fresh start: %v", err)
	}
}

// TestWatcherEditorInPlace: an editor truncating and rewriting the file in
// chunks, and cp of a large file in several slow writes: applied once
// complete, with no rejection of the partial content.
func TestWatcherEditorInPlace(t *testing.T) {
	e := newEnv(t, 3)
	e.start(e.opts())
	vs := e.chain(3)
	slowWrite := func(name string, data []byte, chunks int, pause time.Duration) {
		f, err := os.OpenFile(filepath.Join(e.dir, name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		step := len(data)/chunks + 1
		for i := 0; i < len(data); i += step {
			if _, err := f.Write(data[i:min(i+step, len(data))]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(pause)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// In place over the genesis file itself (as vi with backupcopy=yes).
	slowWrite("v1.yaml", vs[2].Marshal(), 3, 5*time.Millisecond)
	e.waitVersion(2)
	// A bigger file copied in several writes with pauses longer than the debounce.
	bigDoc := e.c.Sign(t, policytest.MustParse(t, append(vs[3].DocumentBytes(), bytes.Repeat([]byte("# padding\n"), 2000)...)), "m1", "m2")
	slowWrite("v3.yaml", bigDoc.Marshal(), 4, 50*time.Millisecond)
	e.waitVersion(3)
	e.stays(3)
	if n := e.rejected(policy.ReasonMalformed); n != 0 {
		t.Fatalf("%v partial writes were rejected; they should have been given time to finish", n)
	}
	if got, want := e.eventLog(), "a:1->2 b:1->2 a:2->3 b:2->3"; got != want {
		t.Fatalf("notifications %q, want %q", got, want)
	}
}

// TestWatcherSymlinkSwap: the Kubernetes ConfigMap layout, where the
// ..data symlink is swapped atomically to a new timestamped folder.
func TestWatcherSymlinkSwap(t *testing.T) {
	e := newEnv(t, 3)
	os.Remove(filepath.Join(e.dir, "v1.yaml"))
	vs := e.chain(3)
	mk := func(ts string, p *policy.Policy) {
		d := filepath.Join(e.dir, "..2026_11_24_"+ts)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "policy.yaml"), p.Marshal(), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(e.dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(d), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(e.dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mk("a", e.g)
	if err := os.Symlink("..data/policy.yaml", filepath.Join(e.dir, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	e.start(e.opts())
	mk("b", vs[2])
	os.RemoveAll(filepath.Join(e.dir, "..2026_11_24_a"))
	e.waitVersion(2)
	mk("c", vs[3])
	os.RemoveAll(filepath.Join(e.dir, "..2026_11_24_b"))
	e.waitVersion(3)
	e.stays(3)
	if got, want := e.eventLog(), "a:1->2 b:1->2 a:2->3 b:2->3"; got != want {
		t.Fatalf("notifications %q, want %q", got, want)
	}
}

// TestWatcherBadInput: junk, under-signed, forged, too large, deletions:
// the last good policy stays, each bad input is counted once by reason.
func TestWatcherBadInput(t *testing.T) {
	e := newEnv(t, 3)
	e.start(e.opts())
	vs := e.chain(2)

	e.rename("junk.yaml", []byte("\x00\x01 this is not a policy"))
	e.waitRejected(policy.ReasonMalformed, 1)
	e.rename("under.yaml", e.c.Sign(t, policytest.MustParse(t, vs[2].DocumentBytes()), "m1").Marshal())
	e.waitRejected(policy.ReasonQuorum, 1)
	e.rename("huge.yaml", bytes.Repeat([]byte("#\n"), policy.MaxBundleSize))
	e.waitRejected(policy.ReasonTooLarge, 1)
	skip := e.c.Next(t, vs[2], describe("v3"), "m1", "m2") // names v2, which is not applied
	e.rename("v3.yaml", skip.Marshal())
	e.waitRejected(policy.ReasonChain, 1)
	// Unrelated files and editor leftovers are ignored.
	e.write("README.txt", []byte("hello"))
	e.write("v2.yaml~", []byte("junk"))
	e.write(".v2.yaml.swp", []byte("junk"))
	e.stays(1)
	// Logged and counted once per input, however often the folder is read.
	for i := 0; i < 3; i++ {
		e.w.Reload()
		time.Sleep(30 * time.Millisecond)
	}
	for _, r := range []string{policy.ReasonMalformed, policy.ReasonQuorum, policy.ReasonTooLarge, policy.ReasonChain} {
		if n := e.rejected(r); n != 1 {
			t.Errorf("reason %s counted %v times, want 1", r, n)
		}
	}
	// Deleting every file keeps the applied policy.
	ents, _ := os.ReadDir(e.dir)
	for _, x := range ents {
		os.Remove(filepath.Join(e.dir, x.Name()))
	}
	e.stays(1)
	// The good version, signed enough, applies; then v3 follows.
	e.rename("v2.yaml", vs[2].Marshal())
	e.rename("v3.yaml", skip.Marshal())
	e.waitVersion(3)
	if got, want := e.eventLog(), "a:1->2 b:1->2 a:2->3 b:2->3"; got != want {
		t.Fatalf("notifications %q, want %q", got, want)
	}
}

// TestWatcherRollbackAndRestart: the applied version survives a restart
// with older files in the folder; a conflicting same-version file is refused.
func TestWatcherRollbackAndRestart(t *testing.T) {
	e := newEnv(t, 3)
	e.start(e.opts())
	vs := e.chain(3)
	e.rename("v2.yaml", vs[2].Marshal())
	e.rename("v3.yaml", vs[3].Marshal())
	e.waitVersion(3)
	e.stop()

	// Someone puts the folder back to version 2 and restarts the appliance.
	os.Remove(filepath.Join(e.dir, "v3.yaml"))
	e.events = nil
	e.start(e.opts())
	if v := e.w.Current().Version(); v != 3 {
		t.Fatalf("restart rolled back to version %d", v)
	}
	if n := e.rejected(policy.ReasonRollback); n != 1 {
		t.Fatalf("rollback counted %v times", n)
	}
	// A different document claiming version 3 is refused.
	fork := e.c.Next(t, vs[2], describe("fork"), "m1", "m2", "m3")
	e.rename("fork.yaml", fork.Marshal())
	e.waitRejected(policy.ReasonConflict, 1)
	e.stays(3)
	if got := e.eventLog(); got != "" {
		t.Fatalf("unexpected notifications %q", got)
	}
}

// TestWatcherCrashBetweenWriteAndRename: a temporary file left by a crash
// (in the policy folder or in the state folder) changes nothing.
func TestWatcherCrashBetweenWriteAndRename(t *testing.T) {
	e := newEnv(t, 3)
	vs := e.chain(2)
	data := vs[2].Marshal()
	// Policy folder: the writer died before its rename.
	e.write(".v2.yaml.tmp", data[:len(data)/2])
	// State folder: SaveState died before its rename.
	if err := policy.SaveState(e.state, e.g); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(e.state, ".applied.policy.tmp-12345")
	if err := os.WriteFile(junk, data[:100], 0o600); err != nil {
		t.Fatal(err)
	}
	e.start(e.opts())
	if e.w.Current().Version() != 1 {
		t.Fatal("not version 1")
	}
	if _, err := os.Stat(junk); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state temp file not cleaned: %v", err)
	}
	e.stays(1)
	if n := e.rejected(policy.ReasonMalformed); n != 0 {
		t.Fatalf("temporary file was read (%v rejections)", n)
	}
	// The writer retries properly.
	e.rename("v2.yaml", data)
	e.waitVersion(2)
}

// TestWatcherSIGHUP: with file events effectively ignored (1h debounce), a
// SIGHUP makes the watcher read the folder.
func TestWatcherSIGHUP(t *testing.T) {
	e := newEnv(t, 3)
	o := e.opts()
	o.Debounce, o.ReloadOnSIGHUP = time.Hour, true
	// Our own registration keeps SIGHUP from killing the test process
	// whatever happens in the watcher.
	keep := make(chan os.Signal, 1)
	signal.Notify(keep, syscall.SIGHUP)
	defer signal.Stop(keep)
	e.start(o)
	<-policy.Armed(e.w)
	vs := e.chain(2)
	e.rename("v2.yaml", vs[2].Marshal())
	time.Sleep(100 * time.Millisecond)
	if e.w.Current().Version() != 1 {
		t.Fatal("applied without SIGHUP")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.waitVersion(2)
}

// TestWatcherFolderRemoved: the whole folder disappears and comes back.
func TestWatcherFolderRemoved(t *testing.T) {
	e := newEnv(t, 3)
	o := e.opts()
	o.Resync = 50 * time.Millisecond
	e.start(o)
	vs := e.chain(2)
	if err := os.RemoveAll(e.dir); err != nil {
		t.Fatal(err)
	}
	e.stays(1)
	if err := os.Mkdir(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.rename("v2.yaml", vs[2].Marshal())
	e.waitVersion(2)
}

func TestWatcherNeedsTrustedStart(t *testing.T) {
	e := newEnv(t, 2)
	o := e.opts()
	o.Genesis = policy.HashDocument([]byte("another consortium"))
	if _, err := policy.NewWatcher(o); !errors.Is(err, policy.ErrNoPolicy) {
		t.Fatalf("wrong pin: %v", err)
	}
	if n := e.rejected(policy.ReasonGenesis); n != 1 {
		t.Fatalf("genesis rejections %v", n)
	}
	o = e.opts()
	o.Genesis = policy.Hash{}
	if _, err := policy.NewWatcher(o); !errors.Is(err, policy.ErrNoPolicy) || !strings.Contains(err.Error(), "no genesis hash is pinned") {
		t.Fatalf("no pin: %v", err)
	}
	o = e.opts()
	o.Dir = t.TempDir()
	if _, err := policy.NewWatcher(o); !errors.Is(err, policy.ErrNoPolicy) {
		t.Fatalf("empty folder: %v", err)
	}
	if err := (&policy.Options{}).Validate(); err == nil {
		t.Fatal("empty options validate")
	}
}

// TestWatcherSubscriberPanic: a panicking subscriber is counted; the others
// still run and the version stays applied.
func TestWatcherSubscriberPanic(t *testing.T) {
	e := newEnv(t, 3)
	o := e.opts()
	w, err := policy.NewWatcher(o)
	if err != nil {
		t.Fatal(err)
	}
	_, cancel := w.Subscribe(func(_, _ *policy.Policy, _ *policy.Diff) { panic("boom") })
	got := make(chan uint64, 10)
	cur, _ := w.Subscribe(func(_, n *policy.Policy, _ *policy.Diff) { got <- n.Version() })
	if cur.Version() != 1 {
		t.Fatal("Subscribe did not return the current policy")
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { stop(); <-done }()
	vs := e.chain(3)
	e.rename("v2.yaml", vs[2].Marshal())
	if v := <-got; v != 2 {
		t.Fatalf("got %d", v)
	}
	cancel()
	e.rename("v3.yaml", vs[3].Marshal())
	if v := <-got; v != 3 {
		t.Fatalf("got %d", v)
	}
	if n := e.rejected(policy.ReasonSubscriber); n != 1 {
		t.Fatalf("subscriber panics counted %v", n)
	}
}

// TestWatcherBusyFolder: a folder that never goes quiet (another program
// writing a file every few milliseconds) still gets read: the debounce has a
// ceiling.
func TestWatcherBusyFolder(t *testing.T) {
	e := newEnv(t, 3)
	o := e.opts()
	o.Debounce = 100 * time.Millisecond // writes come far more often than that
	e.start(o)
	vs := e.chain(2)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				os.WriteFile(filepath.Join(e.dir, "busy.log"), []byte(fmt.Sprint(i)), 0o644)
			}
		}
	}()
	e.rename("v2.yaml", vs[2].Marshal())
	e.waitVersion(2) // would time out if events kept postponing the read
	close(stop)
	<-done
}

// TestWatcherFIFOAndDirectory: a FIFO or a folder named like a bundle is
// rejected without hanging the watcher.
func TestWatcherFIFOAndDirectory(t *testing.T) {
	e := newEnv(t, 3)
	e.start(e.opts())
	if err := syscall.Mkfifo(filepath.Join(e.dir, "fifo.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(e.dir, "dir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.waitRejected(policy.ReasonMalformed, 2)
	vs := e.chain(2)
	e.rename("v2.yaml", vs[2].Marshal())
	e.waitVersion(2)
}

// TestWatcherOlderFileDroppedBesideNewer: an older version dropped into the
// folder while the newer ones are still there (a replayed old bundle) is
// refused and counted as a rollback once, and the applied version stays;
// the files that were there at start (the history) are not counted.
func TestWatcherOlderFileDroppedBesideNewer(t *testing.T) {
	e := newEnv(t, 3)
	e.start(e.opts())
	vs := e.chain(3)
	e.rename("v2.yaml", vs[2].Marshal())
	e.rename("v3.yaml", vs[3].Marshal())
	e.waitVersion(3)
	if n := e.rejected(policy.ReasonRollback); n != 0 {
		t.Fatalf("the applied history counted as %v rollbacks", n)
	}
	e.rename("replayed-v2.yaml", vs[2].Marshal())
	e.waitRejected(policy.ReasonRollback, 1)
	e.stays(3)
	e.w.Reload()
	e.stays(3)
	if n := e.rejected(policy.ReasonRollback); n != 1 {
		t.Fatalf("one replayed file counted %v times", n)
	}
	// Restarted with the same folder: what is there at start is history.
	e.stop()
	e.start(e.opts())
	if v := e.w.Current().Version(); v != 3 {
		t.Fatalf("restart applied version %d", v)
	}
	if n := e.rejected(policy.ReasonRollback); n != 0 {
		t.Fatalf("after a restart the folder's older files counted %v times", n)
	}
}

// TestWatcherCheck: Options.Check decides before anything is applied: a
// refused version is counted (config_update), never persisted nor
// notified, and the same version with what Check wants (here a second
// file of it) applies; a held one applies once Check lets it, without a
// new file event.
func TestWatcherCheck(t *testing.T) {
	e := newEnv(t, 3)
	vs := e.chain(3)
	var mu sync.Mutex
	refuse := map[string]error{vs[2].Hash().String(): errors.New("the channel admins did not sign")}
	o := e.opts()
	o.HoldRetry = 20 * time.Millisecond
	var checked []string
	o.Check = func(cur, next *policy.Policy) error {
		mu.Lock()
		defer mu.Unlock()
		checked = append(checked, fmt.Sprintf("%d->%d", cur.Version(), next.Version()))
		return refuse[next.Hash().String()]
	}
	e.start(o)
	e.rename("v2.yaml", vs[2].Marshal())
	e.waitRejected(policy.ReasonConfigUpdate, 1)
	e.stays(1)
	if st, err := policy.LoadState(e.state); err != nil || st.Version() != 1 {
		t.Fatalf("state after a refused version: %v %v", st.Version(), err)
	}
	if got := e.eventLog(); got != "" {
		t.Fatalf("subscribers saw %q for a refused version", got)
	}
	// Check now holds v2 (its ledger is not ready): nothing applies, and
	// nothing is counted, until the hold is lifted.
	mu.Lock()
	refuse[vs[2].Hash().String()] = fmt.Errorf("%w: the channel is not open yet", policy.ErrHeld)
	mu.Unlock()
	e.rename("v2b.yaml", append(vs[2].Marshal(), '\n')) // same version, a new file
	e.stays(1)
	if n := e.rejected(policy.ReasonConfigUpdate); n != 1 {
		t.Fatalf("%v config_update rejections, want 1 (a hold is not a rejection)", n)
	}
	if v := e.gauge("policy_held_version"); v != 2 {
		t.Fatalf("policy_held_version %v, want 2", v)
	}
	mu.Lock()
	delete(refuse, vs[2].Hash().String())
	mu.Unlock()
	e.waitVersion(2) // HoldRetry reads the folder again, no file event needed
	if v := e.gauge("policy_held_version"); v != 0 {
		t.Fatalf("policy_held_version %v once applied, want 0", v)
	}
	e.write("v3.yaml", vs[3].Marshal())
	e.waitVersion(3)
	mu.Lock()
	defer mu.Unlock()
	if checked[len(checked)-1] != "2->3" {
		t.Fatalf("checks %v, want the last one 2->3", checked)
	}
}

// TestHistory: every applied version is kept in the state folder's
// history, with its signatures, found by hash, and kept across restarts.
func TestHistory(t *testing.T) {
	e := newEnv(t, 3)
	vs := e.chain(3)
	e.start(e.opts())
	e.rename("v2.yaml", vs[2].Marshal())
	e.rename("v3.yaml", vs[3].Marshal())
	e.waitVersion(3)
	e.stop()
	if _, err := policy.NewWatcher(e.opts()); err != nil { // a restart
		t.Fatal(err)
	}
	hist, bad, err := policy.LoadHistory(e.state)
	if err != nil || len(bad) != 0 || len(hist) != 3 {
		t.Fatalf("history: %d versions, %v, %v; want 3", len(hist), bad, err)
	}
	for i, a := range hist {
		if want := vs[i+1]; a.Policy.Hash() != want.Hash() || len(a.Policy.Signatures()) != len(want.Signatures()) || a.At.IsZero() {
			t.Fatalf("history[%d]: version %d with %d signatures, want %d with %d", i, a.Policy.Version(), len(a.Policy.Signatures()), want.Version(), len(want.Signatures()))
		}
	}
	p, err := policy.FindHistory(e.state, vs[2].Hash())
	if err != nil || p == nil || p.Hash() != vs[2].Hash() {
		t.Fatalf("FindHistory(v2): %v %v", p, err)
	}
	if p, err := policy.FindHistory(e.state, policy.HashDocument([]byte("other"))); p != nil || err != nil {
		t.Fatalf("FindHistory(unknown): %v %v", p, err)
	}
}

// TestWatcherAwait: Await returns what a scan begun after the call decided
// about a file just written: applied, held (with Check's reason), rejected
// (with the reason), a replayed older version, the same file name rewritten
// with another verdict (never the stale one), and nothing for a file
// absent when ctx ends.
func TestWatcherAwait(t *testing.T) {
	e := newEnv(t, 3)
	vs := e.chain(3)
	var mu sync.Mutex
	var hold error
	o := e.opts()
	o.HoldRetry = time.Hour // only Await's own requests re-read the folder
	o.Check = func(cur, next *policy.Policy) error {
		mu.Lock()
		defer mu.Unlock()
		return hold
	}
	e.start(o)
	await := func(name string) policy.Verdict {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		v, err := e.w.Await(ctx, filepath.Join(e.dir, name))
		if err != nil {
			t.Fatalf("Await(%s): %v", name, err)
		}
		return v
	}
	mu.Lock()
	hold = fmt.Errorf("%w: the previous CONFIG block is not stored yet", policy.ErrHeld)
	mu.Unlock()
	e.rename("v2.yaml", vs[2].Marshal())
	if v := await("v2.yaml"); v.State != policy.VerdictHeld || v.Version != 2 || !strings.Contains(v.Reason, "CONFIG block is not stored") {
		t.Fatalf("held v2: %+v", v)
	}
	mu.Lock()
	hold = errors.New("the channel admins did not sign")
	mu.Unlock()
	// The same file again: its verdict now is a refusal, not the hold
	// recorded before the call.
	if v := await("v2.yaml"); v.State != policy.VerdictRejected || v.Version != 2 ||
		!strings.Contains(v.Reason, policy.ReasonConfigUpdate) || !strings.Contains(v.Reason, "did not sign") {
		t.Fatalf("refused v2: %+v", v)
	}
	mu.Lock()
	hold = nil
	mu.Unlock()
	if v := await("v2.yaml"); v.State != policy.VerdictApplied || v.Version != 2 {
		t.Fatalf("v2 once allowed: %+v", v)
	}
	e.waitVersion(2)
	e.rename("v3-first.yaml", vs[3].Marshal())
	if v := await("v3-first.yaml"); v.State != policy.VerdictApplied || v.Version != 3 {
		t.Fatalf("v3: %+v", v)
	}
	e.rename("garbage.yaml", []byte("version: [unclosed"))
	if v := await("garbage.yaml"); v.State != policy.VerdictRejected || v.Reason == "" {
		t.Fatalf("garbage: %+v", v)
	}
	e.rename("replayed-v2.yaml", vs[2].Marshal())
	if v := await("replayed-v2.yaml"); v.State != policy.VerdictRejected || !strings.Contains(v.Reason, policy.ReasonRollback) {
		t.Fatalf("replayed v2: %+v", v)
	}
	// v1, in the folder since the start: superseded, not news.
	if v := await("v1.yaml"); v.State != policy.VerdictOlder || v.Version != 1 {
		t.Fatalf("v1: %+v", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if v, err := e.w.Await(ctx, filepath.Join(e.dir, "absent.yaml")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("absent file: %+v, %v", v, err)
	}
}

package policy

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memberd/memberd/internal/dirwatch"
)

// Options configure a Watcher. Zero values of the optional fields are the
// documented defaults; the caller's copy is never modified.
type Options struct {
	// Dir is the policy folder (required). Bundle files are the non-hidden
	// *.yaml / *.yml entries, followed through symlinks (so Kubernetes
	// ConfigMap "..data" swaps work). Keeping old versions there is fine.
	Dir string
	// StateDir holds the applied bundle, the anti-rollback record (required;
	// created 0700 if missing).
	StateDir string
	// Genesis pins the hash of version 1. Required on first start; on later
	// starts the state folder is the trust anchor.
	Genesis Hash
	// Logger receives one line per applied version and per rejected input
	// (nil: discard).
	Logger *slog.Logger
	// Registerer receives the metrics policy_rejected_total{reason},
	// policy_applied_total and policy_version (nil: not registered).
	Registerer prometheus.Registerer
	// Debounce is the quiet time after the last file event before the
	// folder is read (default 20ms).
	Debounce time.Duration
	// Settle is how long a file that does not parse is given to finish being
	// written (by its modification time) before it is rejected (default 1s).
	Settle time.Duration
	// Resync re-reads the folder periodically even without events (default
	// 30s). A removed folder is looked for every min(Resync, 1s).
	Resync time.Duration
	// ReloadOnSIGHUP makes Run re-read the folder on SIGHUP.
	ReloadOnSIGHUP bool
	// Now is the clock for admin key expiry (default time.Now).
	Now func() time.Time
	// Check, when set, is a further condition a version must meet before
	// anything of it is persisted or applied: it is called on the
	// watcher's goroutine with the applied version and a candidate whose
	// admin quorum is already verified (never for the pinned version 1).
	// An error wrapping ErrHeld keeps the candidate unapplied and the
	// folder is read again after HoldRetry; any other error rejects it
	// (reason config_update). The appliance checks there the channel
	// config half of a version, so that one signed change reaches both
	// layers or neither.
	Check func(cur, next *Policy) error
	// HoldRetry is how soon a version held by Check is looked at again
	// (default 500ms).
	HoldRetry time.Duration
}

// Validate checks the options.
func (o *Options) Validate() error {
	if o.Dir == "" {
		return errors.New("policy watcher: Dir (the policy folder) is required")
	}
	if o.StateDir == "" {
		return errors.New("policy watcher: StateDir (for the anti-rollback record) is required")
	}
	if o.Debounce < 0 || o.Settle < 0 || o.Resync < 0 || o.HoldRetry < 0 {
		return errors.New("policy watcher: Debounce, Settle, Resync and HoldRetry must not be negative")
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Debounce == 0 {
		o.Debounce = 20 * time.Millisecond
	}
	if o.Settle == 0 {
		o.Settle = time.Second
	}
	if o.Resync == 0 {
		o.Resync = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.HoldRetry == 0 {
		o.HoldRetry = 500 * time.Millisecond
	}
	return o
}

// Subscriber is called with every applied version: the previous policy, the
// new one, and what changed. Subscribers run one after another on the
// watcher's goroutine in subscription order, exactly once per applied
// version, in version order; a slow subscriber delays the next reload.
type Subscriber func(old, new *Policy, d *Diff)

// MaxFolderFiles bounds how many bundle files of the policy folder are read.
const MaxFolderFiles = 1000

// Rejection reasons (label values of policy_rejected_total).
const (
	ReasonMalformed  = "malformed"
	ReasonTooLarge   = "too_large"
	ReasonGenesis    = "genesis"
	ReasonChain      = "chain"
	ReasonVersion    = "version"
	ReasonQuorum     = "quorum"
	ReasonConflict   = "conflict"
	ReasonRollback   = "rollback"
	ReasonState      = "state"
	ReasonIO         = "io"
	ReasonSubscriber = "subscriber_panic"
	// ReasonConfigUpdate: Options.Check refused the version's channel
	// config half (under-signed for the channel's mod_policies, or no
	// config the channel can take).
	ReasonConfigUpdate = "config_update"
)

// Watcher keeps the current policy of one appliance: it reads the policy
// folder on every change, applies each valid newer version atomically and
// notifies subscribers. Create with NewWatcher, then Run.
type Watcher struct {
	o   Options
	cur atomic.Pointer[Policy]

	mu   sync.Mutex // guards subs and the cur swap
	subs []*subscription
	seq  int

	dw      atomic.Pointer[dirwatch.Watcher] // set by Run, for Reload
	running atomic.Bool
	armed   chan struct{} // closed once Run watches the folder and has read it

	// owned by the scanning goroutine
	seen        map[string][32]byte   // file -> content hash last rejected
	parsed      map[string]parsedFile // file -> last parse, reused while the content is the same
	rollbackLog Hash
	scans       int                 // scans done
	appliedFrom map[string]Hash     // file -> hash of the version applied from it (this run)
	holds       map[string]heldFile // file -> version Check holds (logged once, and once more when long)
	folderErr   bool
	tooMany     bool
	retryAt     time.Time

	rejected *prometheus.CounterVec
	applied  prometheus.Counter
	version  prometheus.Gauge
	held     prometheus.Gauge

	vmu      sync.Mutex         // guards the fields below
	verdicts map[string]Verdict // file -> what the last scan decided about it
	scanned  chan struct{}      // closed (and replaced) when a scan ends
	begun    uint64             // scans begun
	ended    uint64             // scans ended
}

// Verdict is what the watcher decided about one file of its folder.
type Verdict struct {
	State   string `json:"state"` // VerdictApplied, VerdictHeld, VerdictRejected or VerdictOlder
	Version uint64 `json:"version,omitempty"`
	Reason  string `json:"reason,omitempty"` // why it is held or rejected
}

// Verdict states.
const (
	// VerdictApplied: the file's version is the applied one, or was
	// applied from it.
	VerdictApplied = "applied"
	// VerdictHeld: Options.Check holds the version until it can be
	// checked (it is read again; not an error).
	VerdictHeld = "held"
	// VerdictRejected: the file is not applied, Reason says why (for a
	// missing intermediate version, it may still apply once that arrives).
	VerdictRejected = "rejected"
	// VerdictOlder: an older version than the applied one, already
	// superseded (not applied again, and not news).
	VerdictOlder = "older"
)

// heldFile is a version Options.Check holds.
type heldFile struct {
	hash    Hash
	version uint64
	since   time.Time
	warned  bool
}

// longHold is how long a version is held before the watcher warns.
const longHold = time.Minute

type parsedFile struct {
	sum [32]byte
	p   *Policy
	err error
}

type subscription struct {
	id int
	fn Subscriber
}

// NewWatcher loads the state folder and the policy folder and applies what
// is valid, without notifying anyone. It fails with ErrNoPolicy when neither
// gives a trusted policy (first start without the pinned version 1).
func NewWatcher(opts Options) (*Watcher, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	w := &Watcher{o: opts.withDefaults(), armed: make(chan struct{}), seen: map[string][32]byte{}, parsed: map[string]parsedFile{},
		appliedFrom: map[string]Hash{}, holds: map[string]heldFile{}, verdicts: map[string]Verdict{}, scanned: make(chan struct{})}
	w.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "policy_rejected_total",
		Help: "Policy bundles rejected by the watcher, by reason; the last good policy stays applied."}, []string{"reason"})
	w.applied = prometheus.NewCounter(prometheus.CounterOpts{Name: "policy_applied_total", Help: "Policy versions applied."})
	w.version = prometheus.NewGauge(prometheus.GaugeOpts{Name: "policy_version", Help: "Version of the applied policy."})
	w.held = prometheus.NewGauge(prometheus.GaugeOpts{Name: "policy_held_version",
		Help: "Newest policy version held until its channel config half can be checked (0: none)."})
	if r := w.o.Registerer; r != nil {
		for _, c := range []prometheus.Collector{w.rejected, w.applied, w.version, w.held} {
			if err := r.Register(c); err != nil {
				return nil, fmt.Errorf("policy watcher: registering metrics: %w", err)
			}
		}
	}
	if err := os.MkdirAll(w.o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("policy state folder: %w", err)
	}
	st, err := LoadState(w.o.StateDir)
	if err != nil {
		return nil, err
	}
	if st != nil {
		if st.Version() == 1 && !w.o.Genesis.IsZero() && st.Hash() != w.o.Genesis {
			return nil, fmt.Errorf("%w: the state folder %s holds version 1 with hash %s, but the pinned genesis is %s: wrong state folder or wrong pin", ErrGenesis, w.o.StateDir, st.Hash(), w.o.Genesis)
		}
		w.cur.Store(st)
		w.version.Set(float64(st.Version()))
		w.saveHistory(st) // a crash may have come between the state and its history
	}
	if _, err := os.Stat(w.o.Dir); err != nil {
		return nil, fmt.Errorf("policy folder: %w", err)
	}
	w.scan()
	if w.cur.Load() == nil {
		if w.o.Genesis.IsZero() {
			return nil, fmt.Errorf("%w: the state folder %s holds no applied policy and no genesis hash is pinned: give the hash of version 1 ('memberd policy show v1.yaml' prints it)", ErrNoPolicy, w.o.StateDir)
		}
		return nil, fmt.Errorf("%w: the state folder %s holds no applied policy and the policy folder %s has no version 1 with the pinned hash %s", ErrNoPolicy, w.o.StateDir, w.o.Dir, w.o.Genesis)
	}
	return w, nil
}

// Current returns the applied policy (never nil after NewWatcher succeeds).
func (w *Watcher) Current() *Policy { return w.cur.Load() }

// Subscribe registers fn for every version applied from now on and returns
// the policy current at that moment (so no version is missed between the
// two) and a function that cancels the subscription.
func (w *Watcher) Subscribe(fn Subscriber) (current *Policy, cancel func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	id := w.seq
	w.subs = append(w.subs, &subscription{id: id, fn: fn})
	return w.cur.Load(), func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.subs = slices.DeleteFunc(w.subs, func(s *subscription) bool { return s.id == id })
	}
}

// Reload asks Run to re-read the policy folder now (as SIGHUP does). It
// never blocks.
func (w *Watcher) Reload() {
	if dw := w.dw.Load(); dw != nil {
		dw.Trigger()
	}
}

// Run watches the folder until ctx is done (then it returns nil). It may
// be called once. The folder is read when Run has armed the watch (to catch
// changes made since NewWatcher), after file events (debounced, at most
// max(10×Debounce, 200ms) after the first event of a burst), every Resync,
// on Reload and on SIGHUP when ReloadOnSIGHUP is set.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("policy watcher: Run called twice")
	}
	dw, err := dirwatch.New(dirwatch.Config{Dir: w.o.Dir, Name: "policy folder", Debounce: w.o.Debounce,
		Resync: w.o.Resync, ReloadOnSIGHUP: w.o.ReloadOnSIGHUP, Logger: w.o.Logger}, w.read)
	if err != nil {
		return fmt.Errorf("policy watcher: %w", err)
	}
	w.dw.Store(dw) // a Reload before this is covered by the Start read
	if err := dw.Run(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("policy watcher: %w", err)
	}
	return nil
}

// read is the dirwatch.ReadFunc: it scans and asks to be called again when
// a file still being written has had its Settle time.
func (w *Watcher) read(why dirwatch.Reason) time.Time {
	w.scan()
	if why == dirwatch.Start {
		close(w.armed)
	}
	return w.retryAt
}

type fileBundle struct {
	path string
	p    *Policy
	// fresh: the file appeared or changed since the previous scan (never
	// on the first scan, which sees what was there at start).
	fresh bool
}

// scan reads the folder and applies every version that follows the current
// one, link by link. It runs on one goroutine at a time (NewWatcher, then Run).
func (w *Watcher) scan() {
	defer func() { w.scans++ }()
	w.retryAt = time.Time{}
	w.vmu.Lock()
	w.begun++
	w.vmu.Unlock()
	files, present := w.readFolder()
	defer w.endScan(files, present)
	for path := range w.seen {
		if !present[path] {
			delete(w.seen, path)
		}
	}
	for path := range w.parsed {
		if !present[path] {
			delete(w.parsed, path)
		}
	}
	for path := range w.appliedFrom {
		if !present[path] {
			delete(w.appliedFrom, path)
		}
	}
	for path := range w.holds {
		if !present[path] {
			delete(w.holds, path)
		}
	}
	defer w.setHeld()
	if w.cur.Load() == nil {
		for _, f := range files {
			if f.p.Version() != 1 {
				continue
			}
			if _, err := VerifyGenesis(f.p, w.o.Genesis); err != nil {
				w.reject(f.path, f.p.Marshal(), ReasonGenesis, err)
				continue
			}
			w.apply(f.path, f.p)
			break
		}
		if w.cur.Load() == nil {
			return
		}
	}
	now := w.o.Now()
	for progress := true; progress; {
		progress = false
		cur := w.cur.Load()
		for _, f := range files {
			if f.p.Version() <= cur.Version() || f.p.Previous() != cur.Hash() {
				continue
			}
			if _, err := VerifyAt(cur, f.p, now); err != nil {
				w.reject(f.path, f.p.Marshal(), reasonOf(err), err)
				continue
			}
			if !w.check(f.path, cur, f.p) {
				continue
			}
			if w.apply(f.path, f.p) {
				progress = true
				break
			}
		}
	}
	// Report what is left over and cannot apply.
	cur := w.cur.Load()
	var newest *Policy
	freshOld := map[Hash]bool{}
	for _, f := range files {
		if newest == nil || f.p.Version() > newest.Version() {
			newest = f.p
		}
		switch {
		case f.fresh && f.p.Version() < cur.Version() && w.appliedFrom[f.path] != f.p.Hash():
			// An older version dropped in (beside the newer ones or
			// not): it never applies; say so.
			freshOld[f.p.Hash()] = true
			w.reject(f.path, f.p.Marshal(), ReasonRollback, fmt.Errorf("%w: version %d is older than the applied version %d; a policy never goes back, the file is ignored",
				ErrVersion, f.p.Version(), cur.Version()))
		case f.p.Version() > cur.Version() && f.p.Previous() != cur.Hash():
			w.reject(f.path, f.p.Marshal(), ReasonChain, fmt.Errorf("%w: version %d names previous %s, but the applied version %d has hash %s (a missing intermediate version, or a fork)",
				ErrChain, f.p.Version(), f.p.Previous(), cur.Version(), cur.Hash()))
		case f.p.Version() == cur.Version() && f.p.Hash() != cur.Hash():
			w.reject(f.path, f.p.Marshal(), ReasonConflict, fmt.Errorf("%w: another document also claims version %d (hash %s, applied %s)",
				ErrVersion, cur.Version(), f.p.Hash(), cur.Hash()))
		}
	}
	if newest != nil && newest.Version() < cur.Version() && w.rollbackLog != newest.Hash() {
		w.rollbackLog = newest.Hash()
		if !freshOld[newest.Hash()] { // else counted above
			w.count(ReasonRollback)
		}
		w.o.Logger.Warn("policy folder holds only older versions; rollback refused, keeping the applied policy",
			"dir", w.o.Dir, "newest_in_folder", newest.Version(), "version", cur.Version(), "reason", ReasonRollback)
	}
}

// readFolder parses every bundle file; files that do not parse are rejected
// (or given Settle time when just written).
func (w *Watcher) readFolder() ([]fileBundle, map[string]bool) {
	present := map[string]bool{}
	ents, err := os.ReadDir(w.o.Dir)
	if err != nil {
		if !w.folderErr { // log a missing folder once
			w.folderErr = true
			w.o.Logger.Warn("policy folder unreadable; keeping the applied policy", "dir", w.o.Dir, "err", err)
		}
		return nil, present
	}
	w.folderErr = false
	var out []fileBundle
	n := 0
	for _, e := range ents {
		name := e.Name()
		if !isBundleName(name) {
			continue
		}
		if n++; n > MaxFolderFiles {
			if !w.tooMany {
				w.tooMany = true
				w.o.Logger.Warn("policy folder holds too many bundle files; reading only the first ones in name order", "dir", w.o.Dir, "limit", MaxFolderFiles)
			}
			break
		}
		path := filepath.Join(w.o.Dir, name)
		present[path] = true
		data, err := readFileLimited(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) { // dangling symlink or deleted meanwhile
				continue
			}
			w.reject(path, []byte(err.Error()), reasonOf(err), err)
			continue
		}
		sum := sha256.Sum256(data)
		var p *Policy
		fresh := false
		if c, ok := w.parsed[path]; ok && c.sum == sum {
			p, err = c.p, c.err
		} else {
			p, err = Parse(data)
			w.parsed[path] = parsedFile{sum: sum, p: p, err: err}
			fresh = w.scans > 0
		}
		if err != nil {
			if st, serr := os.Stat(path); serr == nil && !errors.Is(err, ErrTooLarge) {
				if settle := st.ModTime().Add(w.o.Settle); time.Now().Before(settle) {
					if w.retryAt.IsZero() || settle.Before(w.retryAt) {
						w.retryAt = settle.Add(5 * time.Millisecond)
					}
					continue // probably still being written
				}
			}
			w.reject(path, data, reasonOf(err), err)
			continue
		}
		out = append(out, fileBundle{path: path, p: p, fresh: fresh})
	}
	// Lowest version first; among equal versions, the most signatures first.
	slices.SortStableFunc(out, func(a, b fileBundle) int {
		if c := cmp.Compare(a.p.Version(), b.p.Version()); c != 0 {
			return c
		}
		return cmp.Compare(len(b.p.sigs), len(a.p.sigs))
	})
	return out, present
}

func isBundleName(name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") {
		return false
	}
	return strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, ErrTooLarge):
		return ReasonTooLarge
	case errors.Is(err, ErrMalformed):
		return ReasonMalformed
	case errors.Is(err, ErrGenesis):
		return ReasonGenesis
	case errors.Is(err, ErrChain):
		return ReasonChain
	case errors.Is(err, ErrVersion):
		return ReasonVersion
	case errors.Is(err, ErrQuorum):
		return ReasonQuorum
	case errors.Is(err, ErrChannelConfig):
		return ReasonConfigUpdate
	default:
		return ReasonIO
	}
}

func (w *Watcher) count(reason string) { w.rejected.WithLabelValues(reason).Inc() }

// setVerdict records what this scan decided about the file at path.
func (w *Watcher) setVerdict(path string, v Verdict) {
	w.vmu.Lock()
	w.verdicts[path] = v
	w.vmu.Unlock()
}

// endScan forgets the verdicts of files gone, gives one to the files this
// scan passed over (the applied version, e.g. from an earlier run, and
// versions superseded since), and wakes Await.
func (w *Watcher) endScan(files []fileBundle, present map[string]bool) {
	cur := w.cur.Load()
	w.vmu.Lock()
	defer w.vmu.Unlock()
	for path := range w.verdicts {
		if !present[path] {
			delete(w.verdicts, path)
		}
	}
	for _, f := range files {
		if cur == nil {
			break
		}
		switch v, ok := w.verdicts[f.path]; {
		case f.p.Hash() == cur.Hash():
			w.verdicts[f.path] = Verdict{State: VerdictApplied, Version: f.p.Version()}
		case ok && (v.State == VerdictRejected || v.State == VerdictHeld && f.p.Version() > cur.Version()):
		case f.p.Version() <= cur.Version():
			w.verdicts[f.path] = Verdict{State: VerdictOlder, Version: f.p.Version(),
				Reason: fmt.Sprintf("version %d is older than the applied version %d", f.p.Version(), cur.Version())}
		}
	}
	w.ended++
	close(w.scanned)
	w.scanned = make(chan struct{})
}

// Await waits until a scan begun after the call has decided about the
// file at path (a bundle file of the policy folder, e.g. one just written
// there) and returns the verdict. It asks for that scan at once (as Reload)
// and returns ctx's error when ctx ends first (also when Run is not
// running).
func (w *Watcher) Await(ctx context.Context, path string) (Verdict, error) {
	path = filepath.Join(w.o.Dir, filepath.Base(path))
	w.vmu.Lock()
	after := w.begun // a scan already under way may have missed the file
	w.vmu.Unlock()
	w.Reload()
	for {
		w.vmu.Lock()
		v, ok := w.verdicts[path]
		next := w.scanned
		fresh := w.ended > after
		w.vmu.Unlock()
		if ok && fresh {
			return v, nil
		}
		select {
		case <-next:
		case <-ctx.Done():
			return Verdict{}, ctx.Err()
		}
	}
}

// reject logs and counts a bad input once per distinct content of a file.
func (w *Watcher) reject(path string, content []byte, reason string, err error) {
	verdict := Verdict{State: VerdictRejected, Reason: reason + ": " + err.Error()}
	if f, ok := w.parsed[path]; ok && f.p != nil {
		verdict.Version = f.p.Version()
	}
	w.setVerdict(path, verdict)
	h := sha256.Sum256(content)
	if old, ok := w.seen[path]; ok && old == h {
		return
	}
	w.seen[path] = h
	w.count(reason)
	cur := w.cur.Load()
	var v uint64
	if cur != nil {
		v = cur.Version()
	}
	w.o.Logger.Warn("policy rejected; keeping the applied policy", "file", path, "reason", reason, "version", v, "err", err)
}

// setHeld sets policy_held_version from the holds still ahead of the
// applied version.
func (w *Watcher) setHeld() {
	var v uint64
	if cur := w.cur.Load(); cur != nil {
		for path, h := range w.holds {
			if h.version <= cur.Version() {
				delete(w.holds, path)
				continue
			}
			v = max(v, h.version)
		}
	}
	w.held.Set(float64(v))
}

// saveHistory adds p to the state folder's history (an audit record: a
// failure is logged, the version stays applied).
func (w *Watcher) saveHistory(p *Policy) {
	if err := SaveHistory(w.o.StateDir, p); err != nil {
		w.o.Logger.Warn("policy version applied but not added to the history of the state folder ('memberd policy log' will miss it)",
			"version", p.Version(), "err", err)
	}
}

// check runs Options.Check on a verified candidate: it reports whether p
// may be applied; a refusal is rejected (counted, logged), a hold asks for
// another read after HoldRetry.
func (w *Watcher) check(path string, cur, p *Policy) bool {
	if w.o.Check == nil {
		return true
	}
	err := w.o.Check(cur, p)
	switch {
	case err == nil:
		delete(w.holds, path)
		return true
	case errors.Is(err, ErrHeld):
		if at := time.Now().Add(w.o.HoldRetry); w.retryAt.IsZero() || at.Before(w.retryAt) {
			w.retryAt = at
		}
		w.setVerdict(path, Verdict{State: VerdictHeld, Version: p.Version(), Reason: err.Error()})
		h, ok := w.holds[path]
		switch {
		case !ok || h.hash != p.Hash():
			w.holds[path] = heldFile{hash: p.Hash(), version: p.Version(), since: time.Now()}
			w.o.Logger.Info("policy version held; applied once it can be checked", "file", path,
				"version", cur.Version(), "held_version", p.Version(), "reason", err.Error())
		case !h.warned && time.Since(h.since) > longHold:
			h.warned = true
			w.holds[path] = h
			w.o.Logger.Warn("policy version held for long: neither the network nor the channel changes until it can be checked; see the ledger's status", "file", path,
				"version", cur.Version(), "held_version", p.Version(), "held_for", time.Since(h.since).Round(time.Second).String(), "reason", err.Error())
		}
		return false
	default:
		if !errors.Is(err, ErrChannelConfig) {
			err = fmt.Errorf("%w: %w", ErrChannelConfig, err)
		}
		w.reject(path, p.Marshal(), ReasonConfigUpdate, fmt.Errorf("version %d is applied to neither the network nor the channel: %w", p.Version(), err))
		return false
	}
}

// apply persists p, swaps it in and notifies subscribers. It reports
// whether p was applied.
func (w *Watcher) apply(path string, p *Policy) bool {
	if err := SaveState(w.o.StateDir, p); err != nil {
		w.reject(path, p.Marshal(), ReasonState, err)
		return false
	}
	w.saveHistory(p)
	w.mu.Lock()
	old := w.cur.Load()
	w.cur.Store(p)
	subs := slices.Clone(w.subs)
	w.mu.Unlock()
	delete(w.seen, path)
	w.appliedFrom[path] = p.Hash()
	w.setVerdict(path, Verdict{State: VerdictApplied, Version: p.Version()})
	w.applied.Inc()
	w.version.Set(float64(p.Version()))
	d := Compare(old, p)
	w.o.Logger.Info("policy applied", "file", path, "version", p.Version(), "hash", p.Hash().String(), "changes", kindsText(d))
	for _, s := range subs {
		w.notify(s, old, p, d)
	}
	return true
}

func (w *Watcher) notify(s *subscription, old, p *Policy, d *Diff) {
	defer func() {
		if r := recover(); r != nil {
			w.count(ReasonSubscriber)
			w.o.Logger.Error("policy subscriber panicked; the policy stays applied", "version", p.Version(), "panic", fmt.Sprint(r))
		}
	}()
	s.fn(old, p, d)
}

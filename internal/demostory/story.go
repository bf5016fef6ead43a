// Package demostory is `memberd demo --ci`: the whole story of a consortium,
// told by the deployed path and verified at every step. It writes a
// consortium with `memberd demo init`, runs two `memberd relay` and three
// `memberd run` processes, and drives them only as an operator would: with
// the memberd command line (ledger submit and fetch, policy sign, verify and
// push, hsm csr, ca sign), pkcs11-tool, files dropped into folders, kill -9,
// and each process's /status. Logs go to files in the demo folder; the
// screen gets one line per step and a summary table.
//
// The package execs the memberd binary (Options.Bin) and imports no command
// code: the story tests what users run.
package demostory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/internal/loopport"
)

// Options say how the story runs.
type Options struct {
	// Bin is the memberd executable the processes and commands run.
	Bin string
	// Dir is the demo folder (created; must be empty or missing). Empty: a
	// new temporary folder, removed after a run that passed.
	Dir string
	// Out gets the story (one line per step, then the summary table).
	Out io.Writer
	// Patience scales every wait (1 = the defaults, already generous for
	// a loaded 2-core machine); 0 = 1.
	Patience float64
}

// Result is one row of the summary table.
type Result struct {
	Step   string
	OK     bool
	Result string // "ok", "FAILED", "not run"
	Figure string
}

// story is one run.
type story struct {
	o    Options
	dir  string // the demo folder
	cons string // dir/consortium (memberd demo init)
	logs string // dir/logs
	env  []string
	L    *layout

	relays  []*proc
	members []*proc
	byName  map[string]*proc

	echo     *echoServer
	fwdAddr  string            // member-a's forward to member-b's echo service
	module   string            // libsofthsm2.so
	genesis  string            // consortium/genesis.yaml
	heights  map[string]uint64 // ledger height after each order() call, by tag
	outMu    sync.Mutex        // guards writes to o.Out and the two fields below
	stepOpen bool              // a step line is open (progress dots go on it)
	details  []string          // lines printed under the step line once it closes
}

// steps, in order, with their titles.
var stepTitles = []string{
	"consortium up",
	"transactions ordered",
	"governance change",
	"relay killed under traffic",
	"identity key rotated",
}

// Run tells the story. It returns the summary rows and an error naming the
// first step that failed (and the log to read).
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Patience <= 0 {
		o.Patience = 1
	}
	bin, err := filepath.Abs(o.Bin)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		return nil, fmt.Errorf("memberd binary %s: not an executable", o.Bin)
	}
	o.Bin = bin
	if err := preflight(); err != nil {
		return nil, err
	}
	temp := o.Dir == ""
	if temp {
		if o.Dir, err = os.MkdirTemp("", "memberd-story-"); err != nil {
			return nil, err
		}
	} else if ents, err := os.ReadDir(o.Dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("--dir %s is not empty: the story writes a new consortium; choose a new folder", o.Dir)
	}
	s := &story{o: o, byName: map[string]*proc{}, heights: map[string]uint64{}}
	if s.dir, err = filepath.Abs(o.Dir); err != nil {
		return nil, err
	}
	s.cons, s.logs = filepath.Join(s.dir, "consortium"), filepath.Join(s.dir, "logs")
	if err := os.MkdirAll(s.logs, 0o755); err != nil {
		return nil, err
	}
	s.printf("memberd demo: the whole story, on loopback; files and logs in %s\n", s.dir)
	results, err := s.run(ctx)
	s.stopAll()
	s.printSummary(results)
	if err == nil {
		if died := s.deaths(); died != "" {
			err = fmt.Errorf("a process died during the story: %s", died)
		}
	}
	switch {
	case err != nil:
		s.printf("\nFAILED (the demo folder %s is kept: logs in %s)\n", s.dir, s.logs)
	case temp:
		s.printf("\nevery step verified\n")
		_ = os.RemoveAll(s.dir)
	default:
		s.printf("\nevery step verified (logs in %s)\n", s.logs)
	}
	return results, err
}

func (s *story) run(ctx context.Context) ([]Result, error) {
	steps := []func(context.Context) (string, error){s.stepUp, s.stepLedger, s.stepGovernance, s.stepFailover, s.stepRotate}
	results := make([]Result, 0, len(steps))
	var failed error
	for i, fn := range steps {
		r := Result{Step: fmt.Sprintf("%d. %s", i+1, stepTitles[i])}
		if failed != nil {
			r.Result = "not run"
			results = append(results, r)
			continue
		}
		s.printf("[%d/%d] %s ", i+1, len(steps)+1, stepTitles[i])
		s.setOpen(true)
		start := time.Now()
		fig, err := fn(ctx)
		if err == nil {
			if d := s.deaths(); d != "" {
				err = errors.New(d)
			}
		}
		took := time.Since(start).Round(100 * time.Millisecond)
		if err != nil {
			s.closeLine(fmt.Sprintf(" FAILED after %v", took))
			s.printf("      %v\n", err)
			r.Result, r.Figure = "FAILED", "see the step's lines above"
			failed = fmt.Errorf("step %d (%s): %s", i+1, stepTitles[i], firstLine(err.Error()))
		} else {
			s.closeLine(fmt.Sprintf(" ok (%v)", took))
			r.OK, r.Result, r.Figure = true, "ok", fig
		}
		s.flushDetails()
		results = append(results, r)
	}
	return results, failed
}

// detail adds a line printed under the step line once it closes.
func (s *story) detail(format string, args ...any) {
	s.outMu.Lock()
	s.details = append(s.details, fmt.Sprintf(format, args...))
	s.outMu.Unlock()
}

func (s *story) flushDetails() {
	s.outMu.Lock()
	d := s.details
	s.details = nil
	s.outMu.Unlock()
	for _, l := range d {
		s.printf("      %s\n", l)
	}
}

func (s *story) printf(format string, args ...any) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	fmt.Fprintf(s.o.Out, format, args...)
}

func (s *story) setOpen(open bool) {
	s.outMu.Lock()
	s.stepOpen = open
	s.outMu.Unlock()
}

func (s *story) closeLine(end string) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	s.stepOpen = false
	fmt.Fprintln(s.o.Out, end)
}

// progress puts a dot on the open step line, and every ten seconds how
// long the wait has lasted.
func (s *story) progress(waited time.Duration) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if !s.stepOpen {
		return
	}
	if sec := int(waited.Seconds()); sec >= 10 && sec%10 < 2 {
		fmt.Fprintf(s.o.Out, "%ds", sec/10*10)
		return
	}
	fmt.Fprint(s.o.Out, ".")
}

// patience scales a wait by Options.Patience.
func (s *story) patience(d time.Duration) time.Duration {
	return time.Duration(float64(d) * s.o.Patience)
}

// waitFor polls cond every 250 ms, a progress dot every 2 s, until it
// returns true, an error that is not worth retrying (stop), or the wait
// (scaled by Patience) is over: then the last error names what was awaited.
func (s *story) waitFor(ctx context.Context, what string, d time.Duration, cond func(context.Context) (ok bool, err error)) error {
	d = s.patience(d)
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	lastDot := start
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := cond(cctx)
		ccancel()
		var st stopError
		if errors.As(err, &st) {
			return st.err
		}
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if d := s.deaths(); d != "" {
			return fmt.Errorf("waiting for %s: %s", what, d)
		}
		if time.Since(lastDot) >= 2*time.Second {
			s.progress(time.Since(start))
			lastDot = time.Now()
		}
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return fmt.Errorf("%s: interrupted (%v)", what, context.Cause(parent))
			}
			if last == nil {
				last = errors.New("condition not met")
			}
			return fmt.Errorf("%s: not within %v: %v", what, d.Round(time.Second), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// stopError ends a waitFor at once.
type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }

// memberd runs a memberd command; its command line and output go to
// logs/commands.log; an error quotes the output's last lines and names the log.
func (s *story) memberd(ctx context.Context, args ...string) (string, error) {
	return s.command(ctx, s.o.Bin, args...)
}

func (s *story) command(ctx context.Context, name string, args ...string) (string, error) {
	logPath := filepath.Join(s.logs, "commands.log")
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = s.env
	cmd.Dir = s.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	f, ferr := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if ferr == nil {
		fmt.Fprintf(f, "\n$ %s %s\n%s%s", filepath.Base(name), strings.Join(args, " "), stderr.Bytes(), stdout.Bytes())
		if err != nil {
			fmt.Fprintf(f, "(exit: %v)\n", err)
		}
		f.Close()
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v: %s (read %s)", filepath.Base(name), strings.Join(args[:min(2, len(args))], " "), err,
			tail2(stderr.String()+stdout.String()), logPath)
	}
	return stdout.String(), nil
}

// tail2 is the last two lines of s.
func tail2(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 2 {
		lines = lines[len(lines)-2:]
	}
	return strings.Join(lines, " | ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

// setup writes the consortium with memberd demo init and prepares the
// configs: fixed relay admin ports, and the echo service member-a reaches on
// member-b through the tunnel (overlay port echoPort), for step 3.
func (s *story) setup(ctx context.Context) error {
	if _, err := s.memberd(ctx, "demo", "init", "--members", "3", "--relays", "2", "--dir", s.cons, "--hsm", "softhsm"); err != nil {
		return err
	}
	L, err := readLayout(s.cons)
	if err != nil {
		return err
	}
	s.L = L
	s.genesis = filepath.Join(s.cons, "genesis.yaml")
	s.env = append(os.Environ(), "SOFTHSM2_CONF="+L.SoftHSMConf)
	if s.module, err = softHSMModule(); err != nil {
		return err
	}
	if s.echo, err = startEcho(); err != nil {
		return err
	}
	if s.fwdAddr, err = loopport.Free(); err != nil {
		return err
	}
	a, b := L.Members[0], L.Members[1]
	for _, id := range L.Relays {
		p := &proc{name: id, relay: true, config: L.RelayConfig[id], logFile: filepath.Join(s.logs, id+".log")}
		// The relay's admin endpoint is 127.0.0.1:0 in the demo: fix it to
		// read the relay's /status.
		if p.admin, err = loopport.Free(); err != nil {
			return err
		}
		if err := confyaml.EditFile(p.config, func(m map[string]any) { m["admin"] = p.admin }); err != nil {
			return err
		}
		s.relays = append(s.relays, p)
		s.byName[id] = p
	}
	for _, id := range L.Members {
		p := &proc{name: id, config: L.MemberConfig[id], logFile: filepath.Join(s.logs, id+".log")}
		if err := confyaml.EditFile(p.config, func(m map[string]any) {
			p.admin, _ = m["admin"].(string)
			if l, ok := m["ledger"].(map[string]any); ok {
				p.ledgerAddr, _ = l["listen"].(string)
			}
			t, _ := m["tunnel"].(map[string]any)
			if t == nil {
				t = map[string]any{}
			}
			switch id {
			case a:
				t["forwards"] = []any{map[string]any{"listen": s.fwdAddr, "member": b, "port": echoPort}}
			case b:
				t["services"] = []any{map[string]any{"port": echoPort, "target": s.echo.addr}}
			}
			m["tunnel"] = t
		}); err != nil {
			return err
		}
		if p.admin == "" || p.ledgerAddr == "" {
			return fmt.Errorf("%s: no admin address or ledger.listen", p.config)
		}
		s.members = append(s.members, p)
		s.byName[id] = p
	}
	return nil
}

// deaths names the processes that ended without the story killing them.
func (s *story) deaths() string {
	var out []string
	for _, p := range append(append([]*proc{}, s.relays...), s.members...) {
		if d := p.died(); d != "" {
			out = append(out, d+"; its last lines:\n"+indent(tail(p.logFile, 8)))
		}
	}
	return strings.Join(out, "\n")
}

// stopAll stops every process the story started (SIGTERM, then SIGKILL
// after 15 s), members first.
func (s *story) stopAll() {
	var wg sync.WaitGroup
	for _, group := range [][]*proc{s.members, s.relays} {
		for _, p := range group {
			wg.Add(1)
			go func() { defer wg.Done(); p.signal(syscall.SIGTERM, 15*time.Second) }()
		}
		wg.Wait()
	}
	if s.echo != nil {
		s.echo.close()
	}
}

func (s *story) printSummary(results []Result) {
	if len(results) == 0 {
		return
	}
	s.printf("\n[6/6] summary\n")
	s.outMu.Lock()
	defer s.outMu.Unlock()
	tw := tabwriter.NewWriter(s.o.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  STEP\tRESULT\tFIGURE")
	for _, r := range results {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", r.Step, r.Result, r.Figure)
	}
	tw.Flush()
}

func indent(s string) string {
	return "        " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n        ")
}

// preflight checks the tools the story runs besides memberd.
func preflight() error {
	for _, t := range []struct{ name, pkg string }{{"softhsm2-util", "softhsm2"}, {"pkcs11-tool", "opensc"}} {
		if _, err := exec.LookPath(t.name); err != nil {
			return fmt.Errorf("demo --ci needs %s: apt-get install %s (or 'make deps')", t.name, t.pkg)
		}
	}
	_, err := softHSMModule()
	return err
}

// softHSMModule finds libsofthsm2.so (pkcs11-tool needs it by path).
func softHSMModule() (string, error) {
	if p := os.Getenv("MEMBERD_TEST_PKCS11_MODULE"); p != "" {
		return p, nil
	}
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/lib64/pkcs11/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			return m, nil
		}
	}
	return "", errors.New("libsofthsm2.so not found: apt-get install softhsm2")
}

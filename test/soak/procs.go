package main

// The consortium as users run it: `memberd demo init` writes it, then one
// `memberd relay` per relay and one `memberd run` per member, each its own
// process, started, killed (kill -9) and restarted by PID.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/internal/loopport"
)

// proc is one memberd process (relay or appliance) and its restarts.
type proc struct {
	name   string // relay-1, member-a, ...
	relay  bool
	config string // its YAML config
	admin  string // admin host:port (/metrics, /status)
	// ledgerAddr is the LAN gRPC address of an appliance's ledger.
	ledgerAddr string

	mu       sync.Mutex // guards the fields below
	cmd      *exec.Cmd
	pid      int
	starts   int
	started  time.Time
	killed   bool          // the harness killed the current run
	exited   chan struct{} // closed when the current run ended
	logFile  string
	exitErr  error
	exitedAt time.Time
}

func (p *proc) current() (pid, starts int, started time.Time, running bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	running = p.exited != nil
	if running {
		select {
		case <-p.exited:
			running = false
		default:
		}
	}
	return p.pid, p.starts, p.started, running
}

// death is a process that ended without the harness killing it.
type death struct {
	name    string
	pid     int
	at      time.Time
	err     error
	logFile string
	tail    string
}

type cluster struct {
	cfg   *config
	bin   string
	dir   string // temporary folder (removed by cleanup unless SOAK_KEEP=1)
	demo  string // dir/consortium
	env   []string
	procs []*proc // relays first, then members
	entry string  // the member the load goes to
	http  *http.Client
	// editMember, if set, edits each appliance's config before its first start.
	editMember func(map[string]any)
	// editRelay, if set, edits each relay's config before its first start.
	editRelay func(map[string]any)
	// extraEnv is added to every process's environment.
	extraEnv []string

	mu     sync.Mutex // guards deaths
	deaths []death
}

func newCluster(c *config) (*cluster, error) {
	bin, err := filepath.Abs(c.bin)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		return nil, fmt.Errorf("SOAK_BIN %s: not an executable (run 'make build' first)", bin)
	}
	dir, err := os.MkdirTemp("", "memberd-soak-")
	if err != nil {
		return nil, err
	}
	cl := &cluster{cfg: c, bin: bin, dir: dir, demo: filepath.Join(dir, "consortium"),
		http: &http.Client{Timeout: 3 * time.Second}}
	if c.pprof {
		cl.editMember = func(m map[string]any) { m["admin_pprof"] = true }
	}
	return cl, nil
}

func (cl *cluster) member(id string) *proc {
	for _, p := range cl.procs {
		if p.name == id {
			return p
		}
	}
	return nil
}

func (cl *cluster) members() []*proc {
	var out []*proc
	for _, p := range cl.procs {
		if !p.relay {
			out = append(out, p)
		}
	}
	return out
}

func (cl *cluster) relays() []*proc {
	var out []*proc
	for _, p := range cl.procs {
		if p.relay {
			out = append(out, p)
		}
	}
	return out
}

// demoLayout is the part of demo.yaml the harness reads.
type demoLayout struct {
	Members      []string          `yaml:"members"`
	Relays       []string          `yaml:"relays"`
	MemberConfig map[string]string `yaml:"memberconfig"`
	RelayConfig  map[string]string `yaml:"relayconfig"`
	SoftHSMConf  string            `yaml:"softhsmconf"`
}

// setup writes the consortium with `memberd demo init` and starts it.
func (cl *cluster) setup(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, cl.bin, "demo", "init", "--members", "3", "--relays", "2", "--dir", cl.demo).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s demo init: %v: %s", cl.bin, err, out)
	}
	raw, err := os.ReadFile(filepath.Join(cl.demo, "demo.yaml"))
	if err != nil {
		return err
	}
	var L demoLayout
	if err := yaml.Unmarshal(raw, &L); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(cl.demo, "demo.yaml"), err)
	}
	if len(L.Members) == 0 || len(L.Relays) == 0 {
		return fmt.Errorf("demo init wrote %d members and %d relays", len(L.Members), len(L.Relays))
	}
	cl.env = append(os.Environ(), cl.extraEnv...)
	if L.SoftHSMConf != "" {
		cl.env = append(cl.env, "SOFTHSM2_CONF="+L.SoftHSMConf)
	}
	for _, id := range L.Relays {
		p := &proc{name: id, relay: true, config: L.RelayConfig[id]}
		// The relay's admin endpoint is 127.0.0.1:0 in the demo: give it a
		// fixed port so its metrics can be read across restarts.
		if p.admin, err = freePort(); err != nil {
			return err
		}
		if err := confyaml.EditFile(p.config, func(m map[string]any) {
			m["admin"] = p.admin
			if cl.editRelay != nil {
				cl.editRelay(m)
			}
		}); err != nil {
			return err
		}
		cl.procs = append(cl.procs, p)
	}
	for _, id := range L.Members {
		p := &proc{name: id, config: L.MemberConfig[id]}
		if err := confyaml.EditFile(p.config, func(m map[string]any) {
			p.admin, _ = m["admin"].(string)
			if l, ok := m["ledger"].(map[string]any); ok {
				p.ledgerAddr, _ = l["listen"].(string)
			}
			if cl.editMember != nil {
				cl.editMember(m)
			}
		}); err != nil {
			return err
		}
		if p.admin == "" || p.ledgerAddr == "" {
			return fmt.Errorf("%s: no admin address or ledger.listen", p.config)
		}
		cl.procs = append(cl.procs, p)
	}
	cl.entry = L.Members[0]
	for _, p := range cl.procs {
		if err := cl.start(p); err != nil {
			return err
		}
	}
	return cl.waitReady(ctx, 90*time.Second)
}

// waitReady waits until every relay answers /healthz and every appliance
// /readyz with a known raft leader.
func (cl *cluster) waitReady(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for _, p := range cl.procs {
		for {
			var err error
			if p.relay {
				err = cl.get(ctx, p, "/healthz", nil)
			} else {
				var st status
				if err = cl.get(ctx, p, "/readyz", nil); err == nil {
					if err = cl.get(ctx, p, "/status", &st); err == nil && st.Ledger.Leader == "" {
						err = errors.New("no raft leader yet")
					}
				}
			}
			if err == nil {
				break
			}
			if _, _, _, running := p.current(); !running {
				return fmt.Errorf("%s exited during startup (log %s)", p.name, p.logFile)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s not ready: %v (log %s)", p.name, err, p.logFile)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// start runs p's process; its output goes to dir/logs/<name>.<n>.log.
func (cl *cluster) start(p *proc) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	sub := "run"
	if p.relay {
		sub = "relay"
	}
	if err := os.MkdirAll(filepath.Join(cl.dir, "logs"), 0o755); err != nil {
		return err
	}
	p.logFile = filepath.Join(cl.dir, "logs", fmt.Sprintf("%s.%d.log", p.name, p.starts+1))
	f, err := os.Create(p.logFile)
	if err != nil {
		return err
	}
	cmd := exec.Command(cl.bin, sub, "--config", p.config)
	cmd.Env = cl.env
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group (a terminal Ctrl-C reaches only the harness, which
	// then stops everything in order) and killed if the harness dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	p.cmd, p.pid, p.started, p.killed = cmd, cmd.Process.Pid, time.Now(), false
	p.starts++
	exited := make(chan struct{})
	p.exited = exited
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.exitErr, p.exitedAt = err, time.Now()
		killed, pid, log := p.killed, cmd.Process.Pid, p.logFile
		p.mu.Unlock()
		close(exited)
		if !killed {
			d := death{name: p.name, pid: pid, at: time.Now(), err: err, logFile: log, tail: logTail(log, 40)}
			cl.mu.Lock()
			cl.deaths = append(cl.deaths, d)
			cl.mu.Unlock()
			fmt.Printf("!! %s (pid %d) DIED: %v; last lines of %s:\n%s\n", p.name, pid, err, log, indent(d.tail))
		}
	}()
	return nil
}

// signal sends sig to p's current process (by PID) and, with wait, waits for
// it to end (up to 10 s; then SIGKILL).
func (cl *cluster) signal(p *proc, sig syscall.Signal, wait bool) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	if cmd == nil {
		p.mu.Unlock()
		return
	}
	select {
	case <-exited:
		p.mu.Unlock()
		return
	default:
	}
	p.killed = true
	p.mu.Unlock()
	cmd.Process.Signal(sig)
	if !wait {
		return
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// cleanup stops every process the harness started (SIGTERM, then SIGKILL
// after 10 s) and removes the temporary folder unless SOAK_KEEP=1.
func (cl *cluster) cleanup() {
	var wg sync.WaitGroup
	for _, p := range cl.procs {
		wg.Add(1)
		go func() { defer wg.Done(); cl.signal(p, syscall.SIGTERM, true) }()
	}
	wg.Wait()
	if cl.cfg.keep {
		fmt.Printf("soak: kept %s (logs in %s)\n", cl.dir, filepath.Join(cl.dir, "logs"))
		return
	}
	if err := os.RemoveAll(cl.dir); err != nil {
		fmt.Fprintf(os.Stderr, "soak: removing %s: %v\n", cl.dir, err)
	}
}

func (cl *cluster) deathList() []death {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([]death(nil), cl.deaths...)
}

func (cl *cluster) printDeaths() {
	for _, d := range cl.deathList() {
		fmt.Printf("%s (pid %d) died at %s: %v\n%s\n", d.name, d.pid, d.at.Format(time.TimeOnly), d.err, indent(d.tail))
	}
}

// status is the part of an appliance's /status the harness reads.
type status struct {
	Ledger struct {
		Height    uint64 `json:"height"`
		Leader    string `json:"leader"`
		Term      uint64 `json:"term"`
		RaftState string `json:"raft_state"`
		State     string `json:"state"`
	} `json:"ledger"`
	Relays []relayStatus `json:"relays"`
}

type relayStatus struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Path    string `json:"path"`
	Healthy bool   `json:"healthy"`
	Active  bool   `json:"active"`
	// Backup: packets are copied to it while the active relay is quiet.
	Backup bool `json:"backup"`
	// Since is when the connection reached its state.
	Since time.Time `json:"since"`
}

// get fetches path from p's admin endpoint; a non-200 answer is an error;
// into (if not nil) gets the JSON body.
func (cl *cluster) get(ctx context.Context, p *proc, path string, into any) error {
	body, err := cl.getRaw(ctx, p, path)
	if err != nil || into == nil {
		return err
	}
	return json.Unmarshal(body, into)
}

func (cl *cluster) getRaw(ctx context.Context, p *proc, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s%s: %s: %s", p.admin, path, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

func (cl *cluster) status(ctx context.Context, p *proc) (*status, error) {
	var st status
	if err := cl.get(ctx, p, "/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

func freePort() (string, error) { return loopport.Free() }

// logTail returns the last n lines of a log file; a Go panic's trace, if
// any, is returned from its first line instead.
func logTail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if i := bytes.LastIndex(raw, []byte("\npanic: ")); i >= 0 {
		raw = raw[i+1:]
		if len(raw) > 8000 {
			raw = raw[:8000]
		}
		return string(raw)
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

package demostory

// The consortium's processes: one `memberd relay` per relay and one
// `memberd run` per member, each its own process started from the files
// `memberd demo init` wrote, logging into DIR/logs/<name>.log, killed by PID.

import (
	"bytes"
	"context"
	"encoding/json"
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
)

// proc is one memberd process (relay or appliance).
type proc struct {
	name    string // relay-1, member-a, ...
	relay   bool
	config  string // its YAML config
	admin   string // admin host:port (/status, /ping, /push)
	logFile string

	// ledgerAddr is the LAN gRPC address of an appliance's ledger.
	ledgerAddr string

	mu      sync.Mutex // guards the fields below
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process ended
	exitErr error
	killed  bool // the story killed it on purpose
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// died returns why p ended when the story did not kill it ("" while it runs
// or when it was killed on purpose).
func (p *proc) died() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil || p.killed {
		return ""
	}
	select {
	case <-p.exited:
		return fmt.Sprintf("%s exited (%v); read %s", p.name, p.exitErr, p.logFile)
	default:
		return ""
	}
}

// start runs p, its output appended to its log file. The process is in its
// own process group (a Ctrl-C reaches only the story, which then stops
// everything) and gets SIGKILL if the story dies.
func (p *proc) start(bin string, env []string) error {
	sub := "run"
	if p.relay {
		sub = "relay"
	}
	f, err := os.OpenFile(p.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, sub, "--config", p.config, "--log-format", "json")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited, p.killed, p.exitErr = cmd, exited, false, nil
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// signal sends sig to p's process (by PID) and waits up to wait for it to
// end (then SIGKILL). It returns the PID signalled (0 if none ran).
func (p *proc) signal(sig syscall.Signal, wait time.Duration) int {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	if cmd == nil || exited == nil {
		p.mu.Unlock()
		return 0
	}
	p.killed = true
	p.mu.Unlock()
	select {
	case <-exited:
		return 0
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-exited
	}
	return cmd.Process.Pid
}

// status is the part of a /status document (appliance or relay) the story
// reads.
type status struct {
	Role   string `json:"role"`
	Member string `json:"member"`
	Policy struct {
		Version uint64 `json:"version"`
		Hash    string `json:"hash"`
	} `json:"policy"`
	PolicyVersion uint64 `json:"policy_version"` // relay
	Identity      struct {
		Subject  string    `json:"subject"`
		Serial   string    `json:"serial"`
		NotAfter time.Time `json:"not_after"`
	} `json:"identity"`
	Relays []struct {
		ID      string `json:"id"`
		State   string `json:"state"`
		Path    string `json:"path"`
		Healthy bool   `json:"healthy"`
		Active  bool   `json:"active"`
		RTT     int64  `json:"rtt_ns"`
	} `json:"relays"`
	Tunnel struct {
		CertificateSerial string `json:"certificate_serial"`
		ACLDenied         uint64 `json:"acl_denied"`
		Peers             []struct {
			Member            string `json:"member"`
			CertificateSerial string `json:"certificate_serial"`
		} `json:"peers"`
	} `json:"tunnel"`
	Ledger json.RawMessage `json:"ledger"`
}

// ledger is the ledger object of an appliance's /status.
type ledger struct {
	Height            uint64 `json:"height"`
	Leader            string `json:"leader"`
	State             string `json:"state"`
	CertificateSerial string `json:"certificate_serial"`
}

func (s *status) ledger() ledger {
	var l ledger
	_ = json.Unmarshal(s.Ledger, &l) // a string when not configured: zero
	return l
}

// activeRelay is the relay the appliance sends on, and its path.
func (s *status) activeRelay() (id, path string) {
	for _, r := range s.Relays {
		if r.Active {
			return r.ID, r.Path
		}
	}
	return "", ""
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// httpError is an admin endpoint's answer other than 200.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

// get fetches path from an admin endpoint; a non-200 answer is an error;
// into (if not nil) gets the JSON body.
func get(ctx context.Context, admin, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+path, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &httpError{code: resp.StatusCode, msg: fmt.Sprintf("%s%s: %s: %s", admin, path, resp.Status, bytes.TrimSpace(body))}
	}
	if into == nil {
		return nil
	}
	return json.Unmarshal(body, into)
}

func (p *proc) status(ctx context.Context) (*status, error) {
	var st status
	if err := get(ctx, p.admin, "/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// layout is the part of demo.yaml (written by memberd demo init) the story reads.
type layout struct {
	Members      []string          `yaml:"members"`
	Relays       []string          `yaml:"relays"`
	MemberConfig map[string]string `yaml:"memberconfig"`
	RelayConfig  map[string]string `yaml:"relayconfig"`
	AdminKey     map[string]string `yaml:"adminkey"`
	SoftHSMConf  string            `yaml:"softhsmconf"`
}

func readLayout(dir string) (*layout, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "demo.yaml"))
	if err != nil {
		return nil, err
	}
	var L layout
	if err := yaml.Unmarshal(raw, &L); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "demo.yaml"), err)
	}
	if len(L.Members) < 3 || len(L.Relays) < 2 {
		return nil, fmt.Errorf("demo init wrote %d members and %d relays; the story needs 3 and 2", len(L.Members), len(L.Relays))
	}
	return &L, nil
}

// tail returns the last n lines of a log file.
func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

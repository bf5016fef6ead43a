//go:build e2e

package e2e_test

// The consortium as users deploy it, one host each: `memberd demo init`
// writes it (relay addresses on the relay hosts), then `memberd relay` on two
// relay hosts and `memberd run` on three member hosts behind a corporate
// nftables ruleset, each its own process, started, killed (kill -9) and
// restarted by PID.

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
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/internal/netnstest"
	"github.com/memberd/memberd/internal/testenv"
)

// Addresses on the test's own bridge (not connected to the root namespace).
const (
	relay1IP = "10.77.0.11"
	relay2IP = "10.77.0.12"
	proxyIP  = "10.77.0.30"
	memberIP = "10.77.0.2" // + index: 10.77.0.21, .22, .23
	// relayRate is the relays' per-member ingress limit, bytes/s: the
	// relay's default (relay.Config.RateBytesPerSec).
	relayRate = 12_500_000
)

// proc is one memberd process (relay or appliance) on its host.
type proc struct {
	name   string
	relay  bool
	host   *netnstest.Host
	config string
	admin  string   // admin host:port inside its namespace
	ledger string   // LAN gRPC address of an appliance, inside its namespace
	argv   []string // set for a process that is not memberd (the proxy)
	// removed: a member the policy no longer lists (not in members()).
	removed bool

	mu      sync.Mutex // guards the fields below
	cmd     *exec.Cmd
	exited  chan struct{}
	killed  bool
	starts  int
	log     *bytes.Buffer
	logs    []string // output of the previous runs
	diedErr error    // set when the process ended without the test ending it
}

type cluster struct {
	t      *testing.T
	bin    string
	nft    string
	dir    string
	env    []string
	net    *netnstest.Net
	proxy  *netnstest.Host
	procs  []*proc
	layout demoLayout
}

type demoLayout struct {
	Dir          string            `yaml:"dir"`
	Members      []string          `yaml:"members"`
	Relays       []string          `yaml:"relays"`
	MemberConfig map[string]string `yaml:"memberconfig"`
	RelayConfig  map[string]string `yaml:"relayconfig"`
	AdminKey     map[string]string `yaml:"adminkey"`
	SoftHSMConf  string            `yaml:"softhsmconf"`
}

// memberdBin returns the binary under test: MEMBERD_E2E_BIN (make e2e sets
// it to bin/memberd), else one built from this tree.
func memberdBin(t *testing.T) string { return testenv.Memberd(t, "MEMBERD_E2E_BIN", t.TempDir()) }

// newCluster makes the hosts and writes the consortium; nothing runs yet.
func newCluster(t *testing.T) *cluster {
	testenv.Root(t)
	ipBin := testenv.Command(t, "ip", "iproute2")
	cl := &cluster{t: t, nft: testenv.Command(t, "nft", "nftables"), bin: memberdBin(t), dir: t.TempDir()}
	testenv.SoftHSMModule(t)
	cl.net = netnstest.New(t, ipBin, 24)
	r1 := cl.net.AddHost("relay1", relay1IP)
	r2 := cl.net.AddHost("relay2", relay2IP)
	cl.proxy = cl.net.AddHost("proxy", proxyIP)
	demo := filepath.Join(cl.dir, "consortium")
	out, err := exec.Command(cl.bin, "demo", "init", "--members", "3", "--relays", "2", "--dir", demo,
		"--relay-addr", relay1IP+":443", "--relay-addr", relay2IP+":443").CombinedOutput()
	if err != nil {
		t.Fatalf("memberd demo init: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(demo, "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &cl.layout); err != nil || len(cl.layout.Members) != 3 || len(cl.layout.Relays) != 2 {
		t.Fatalf("demo.yaml: %v (%d members, %d relays)", err, len(cl.layout.Members), len(cl.layout.Relays))
	}
	cl.env = append(os.Environ(), "SOFTHSM2_CONF="+cl.layout.SoftHSMConf)
	for i, id := range cl.layout.Relays {
		p := &proc{name: id, relay: true, host: []*netnstest.Host{r1, r2}[i], config: cl.layout.RelayConfig[id], admin: "127.0.0.1:9464"}
		editYAML(t, p.config, func(m map[string]any) {
			m["admin"] = p.admin
			// demo init turns the per-member rate limit off (benchmarks);
			// a DMZ relay runs with the default, which member_abuse floods.
			lim, _ := m["limits"].(map[string]any)
			if lim == nil {
				lim = map[string]any{}
			}
			lim["rate_bytes_per_sec"] = relayRate
			m["limits"] = lim
		})
		cl.procs = append(cl.procs, p)
	}
	for i, id := range cl.layout.Members {
		h := cl.net.AddHost(strings.TrimPrefix(id, "member-"), fmt.Sprintf("%s%d", memberIP, i+1))
		if err := h.Nft(cl.nft, corporateRules(false)); err != nil {
			t.Fatal(err)
		}
		p := &proc{name: id, host: h, config: cl.layout.MemberConfig[id]}
		editYAML(t, p.config, func(m map[string]any) {
			p.admin, _ = m["admin"].(string)
			if l, ok := m["ledger"].(map[string]any); ok {
				p.ledger, _ = l["listen"].(string)
			}
		})
		cl.procs = append(cl.procs, p)
	}
	t.Cleanup(cl.stopAll)
	return cl
}

// corporateRules is a DMZ host's egress ruleset: inbound only loopback and
// established flows; outbound only loopback and the relays' port 443 (UDP
// and TCP), or with viaProxy only the proxy's port 8888.
func corporateRules(viaProxy bool) string {
	allow := fmt.Sprintf("  ip daddr { %s, %s } udp dport 443 accept\n  ip daddr { %s, %s } tcp dport 443 accept\n",
		relay1IP, relay2IP, relay1IP, relay2IP)
	if viaProxy {
		allow = "  ip daddr " + proxyIP + " tcp dport 8888 accept\n"
	}
	return "table inet corp\ndelete table inet corp\ntable inet corp {\n" +
		" chain in {\n  type filter hook input priority 0; policy drop;\n  iif lo accept\n  ct state established,related accept\n }\n" +
		" chain out {\n  type filter hook output priority 0; policy drop;\n  oif lo accept\n" + allow +
		"  counter comment \"dropped egress\"\n }\n}\n"
}

func (cl *cluster) member(id string) *proc {
	for _, p := range cl.procs {
		if p.name == id {
			return p
		}
	}
	panic("e2e: no process " + id) // ids come from demo.yaml

}

func (cl *cluster) members() (out []*proc) {
	for _, p := range cl.procs {
		if !p.relay && p.argv == nil && !p.removed {
			out = append(out, p)
		}
	}
	return out
}

// start runs p on its host, with extra environment variables; t is the
// (sub)test that fails if it cannot.
func (cl *cluster) start(t testing.TB, p *proc, env ...string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	sub := []string{"run", "--log-format", "json", "--config", p.config}
	if p.relay {
		sub = []string{"relay", "--config", p.config}
	}
	cmd := p.host.Command(context.Background(), cl.bin, sub...)
	if p.argv != nil {
		cmd = p.host.Command(context.Background(), p.argv[0], p.argv[1:]...)
	}
	cmd.Env = append(append([]string(nil), cl.env...), env...)
	if p.log != nil {
		p.logs = append(p.logs, p.log.String())
	}
	p.log = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = syncWriter{&p.mu, p.log}, syncWriter{&p.mu, p.log}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", p.name, err)
	}
	p.cmd, p.killed, p.exited = cmd, false, make(chan struct{})
	p.starts++
	exited := p.exited
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		if !p.killed {
			p.diedErr = fmt.Errorf("%s (pid %d) exited by itself: %v", p.name, cmd.Process.Pid, err)
		}
		p.mu.Unlock()
		close(exited)
	}()
}

// syncWriter lets a process's output be read while it runs.
type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.log == nil {
		return ""
	}
	return p.log.String()
}

// signal sends sig to p's current process by PID and waits (up to 10 s,
// then SIGKILL) for it to end.
func (cl *cluster) signal(p *proc, sig syscall.Signal) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	if cmd == nil {
		p.mu.Unlock()
		return
	}
	p.killed = true
	p.mu.Unlock()
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

func (cl *cluster) stopAll() {
	var wg sync.WaitGroup
	for _, p := range cl.procs {
		wg.Add(1)
		go func() { defer wg.Done(); cl.signal(p, syscall.SIGTERM) }()
	}
	wg.Wait()
	if cl.t.Failed() {
		for _, p := range cl.procs {
			cl.t.Logf("=== %s output (last 60 lines):\n%s", p.name, tail(p.output(), 60))
		}
	}
}

// checkAlive fails t for every process that ended by itself.
func (cl *cluster) checkAlive(t testing.TB) {
	t.Helper()
	for _, p := range cl.procs {
		p.mu.Lock()
		err := p.diedErr
		p.mu.Unlock()
		if err != nil {
			t.Errorf("%v; last lines:\n%s", err, tail(p.output(), 40))
		}
	}
}

// httpClient reaches admin endpoints inside a host's namespace.
func httpClient(h *netnstest.Host) *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext:       h.DialContext,
		DisableKeepAlives: true,
	}}
}

func (cl *cluster) get(p *proc, path string) ([]byte, error) {
	resp, err := httpClient(p.host).Get("http://" + p.admin + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("%s %s: %s: %s", p.name, path, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// status is the part of an appliance's /status the test reads.
type status struct {
	Ledger struct {
		Height uint64 `json:"height"`
		Leader string `json:"leader"`
		Term   uint64 `json:"term"`
		// RaftCommit: the raft commit index this member knows.
		RaftCommit uint64 `json:"raft_commit"`
	} `json:"ledger"`
	Relays []struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Path   string `json:"path"`
		Active bool   `json:"active"`
	} `json:"relays"`
}

func (cl *cluster) status(p *proc) (*status, error) {
	body, err := cl.get(p, "/status")
	if err != nil {
		return nil, err
	}
	var st status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("%s /status: %w", p.name, err)
	}
	return &st, nil
}

// ready: p answers /readyz (relays /healthz) and an appliance knows a leader.
func (cl *cluster) ready(p *proc) error {
	if p.relay {
		_, err := cl.get(p, "/healthz")
		return err
	}
	if _, err := cl.get(p, "/readyz"); err != nil {
		return err
	}
	st, err := cl.status(p)
	if err != nil {
		return err
	}
	if st.Ledger.Leader == "" {
		return fmt.Errorf("%s: no raft leader yet", p.name)
	}
	return nil
}

// waitFor polls cond every 50 ms until it holds or d passes; it returns the
// time taken and whether cond held.
func waitFor(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leader returns the raft leader as the running members see it.
func (cl *cluster) leader() (*proc, uint64) {
	for _, p := range cl.members() {
		if st, err := cl.status(p); err == nil && st.Ledger.Leader != "" {
			for _, q := range cl.members() {
				if q.name == st.Ledger.Leader {
					return q, st.Ledger.Term
				}
			}
		}
	}
	return nil, 0
}

func editYAML(t *testing.T, path string, fn func(map[string]any)) {
	t.Helper()
	if err := confyaml.EditFile(path, fn); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// relayPaths returns "relay-1=quic/up relay-2=tcp/up" for p.
func relayPaths(st *status) string {
	var b []string
	for _, r := range st.Relays {
		b = append(b, fmt.Sprintf("%s=%s/%s", r.ID, r.Path, r.State))
	}
	return strings.Join(b, " ")
}

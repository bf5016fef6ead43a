package geth_test

// Processes of the scenario: memberd relays and appliances from `memberd
// demo init`, and geth nodes. Each runs in its own process group, is killed
// if the test binary dies (Pdeathsig), and is stopped by PID in t.Cleanup.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/internal/loopport"
)

// process is one child the test started.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
	err  error         // its exit status, set before done closes
}

// startProcess runs bin with args, output to dir/<name>.log; t.Cleanup
// stops it (SIGTERM, SIGKILL after 10 s).
func startProcess(t *testing.T, dir, name string, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s (%s): %v", name, bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
	return p
}

func (p *process) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop signals the process by PID and waits for it, killing it after grace.
func (p *process) stop(sig syscall.Signal, grace time.Duration) {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, for failure messages.
func (p *process) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	return p.name + " log (" + p.log + "):\n    " + strings.Join(lines, "\n    ")
}

// demoLayout is the part of demo.yaml the test reads.
type demoLayout struct {
	Members      []string          `yaml:"members"`
	Relays       []string          `yaml:"relays"`
	MemberConfig map[string]string `yaml:"memberconfig"`
	RelayConfig  map[string]string `yaml:"relayconfig"`
	SoftHSMConf  string            `yaml:"softhsmconf"`
}

// addTunnelSection appends a tunnel section to the appliance config at
// path (as an operator would), moves its admin endpoint to adminHost (same
// port) and returns the admin address.
func addTunnelSection(path, section, adminHost string) (admin string, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var doc struct {
		Admin  string `yaml:"admin"`
		Tunnel any    `yaml:"tunnel"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if doc.Tunnel != nil || doc.Admin == "" {
		return "", fmt.Errorf("%s: want no tunnel section and an admin address (demo init changed?)", path)
	}
	_, port, err := net.SplitHostPort(doc.Admin)
	if err != nil {
		return "", fmt.Errorf("%s: admin: %w", path, err)
	}
	admin = net.JoinHostPort(adminHost, port)
	line := []byte("\nadmin: " + doc.Admin + "\n")
	if !bytes.Contains(raw, line) {
		return "", fmt.Errorf("%s: no top-level line %q (demo init changed?)", path, bytes.TrimSpace(line))
	}
	raw = bytes.Replace(raw, line, []byte("\nadmin: "+admin+"\n"), 1)
	raw = append(bytes.TrimRight(raw, "\n"), "\n"+section...)
	return admin, os.WriteFile(path, raw, 0o644)
}

// loopbackPort returns a free port on 127.0.0.1, below the ephemeral range
// (geth binds it later).
func loopbackPort(t *testing.T) int {
	t.Helper()
	a, err := loopport.Free()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(a[strings.LastIndex(a, ":")+1:])
	return p
}

// httpJSON GETs url with client (nil: http.DefaultClient) into v (nil:
// only the status matters).
func httpJSON(ctx context.Context, client *http.Client, url string, v any) error {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(body, v)
}

// eventually polls fn every interval until it returns nil or ctx/limit
// ends; it returns fn's last error then.
func eventually(ctx context.Context, limit, interval time.Duration, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", limit, err)
		case <-time.After(interval):
		}
	}
}

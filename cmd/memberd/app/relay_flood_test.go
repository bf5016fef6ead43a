package app

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/logtest"
	"github.com/memberd/memberd/relay/relaytest"
)

// syncBuffer is a bytes.Buffer safe for a child's stderr and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRelayBinaryHalfOpenFlood runs the real memberd binary as a relay, as
// deployed, and floods it with 2,000 TCP connections from one source that
// never send a TLS hello (issue #11 item 3: all were accepted and held for
// 10s, fds 12 -> 2,012). The relay's fds stay within
// max_handshakes_per_source of where they were, the surplus is closed at
// once and counted, the log has a handful of WARN lines, and two members
// (another source) connect and exchange a packet during the flood.
func TestRelayBinaryHalfOpenFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the memberd binary")
	}
	const flood, perSource = 2000, 16
	f := newRelayFixture(t)
	addr, adminAddr := relaytest.FreePort(t), relaytest.FreePort(t)
	cfg := strings.NewReplacer(`listen: "127.0.0.1:0"`, `listen: "`+addr+`"`, `admin: "127.0.0.1:0"`, `admin: "`+adminAddr+`"`).Replace(f.config)
	cfg += "limits: {max_handshakes_per_source: " + strconv.Itoa(perSource) + ", handshake_timeout: 10s}\n"
	cfgPath := writeFile(t, f.dir, "relay.yaml", []byte(cfg))

	bin := filepath.Join(t.TempDir(), "memberd")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/memberd/memberd/cmd/memberd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var stderr syncBuffer
	cmd := exec.Command(bin, "relay", "--config", cfgPath)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	waitUntil(t, 20*time.Second, func() bool {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	fdDir := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/fd"
	fds := func() int {
		es, err := os.ReadDir(fdDir)
		if err != nil {
			t.Fatalf("relay process: %v", err)
		}
		return len(es)
	}
	before := fds()

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	t0 := time.Now()
	peak := before
	for i := range flood {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("flood connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if i%100 == 0 {
			peak = max(peak, fds())
		}
	}
	dialled := time.Since(t0)
	metric := regexp.MustCompile(`memberd_relay_handshake_failures_total\{reason="over_limit_source"\} (\d+)`)
	var refused int
	waitUntil(t, 5*time.Second, func() bool {
		peak = max(peak, fds())
		resp, err := http.Get("http://" + adminAddr + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := metric.FindSubmatch(b); m != nil {
			refused, _ = strconv.Atoi(string(m[1]))
		}
		return refused >= flood-perSource
	})
	during := fds()
	// The relay counts a refusal before its close reaches this side, so a
	// connection is held only if it stays open until the others' closes
	// have arrived (the handshake timeout, 10 s, is far off).
	stillOpen := conns
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		var next []net.Conn
		for _, c := range stillOpen {
			_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				next = append(next, c)
			}
		}
		stillOpen = next
		if len(stillOpen) <= perSource {
			break
		}
	}
	open := len(stillOpen)

	// Members from 127.0.0.1 get in during the flood.
	clients := f.members(t, addr)
	sendUntilReceived(t, clients["bank-a"], clients["bank-b"], "bank-a", "bank-b", "during-flood", 10*time.Second)
	// stderr is not a terminal: JSON lines, as under systemd.
	var warnLines []string
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		kv, err := logtest.JSONLine([]byte(l))
		if err != nil {
			t.Errorf("log line %q: %v", l, err)
			continue
		}
		if kv["level"] == "WARN" && kv["msg"] == "relay connection refused or failed before admission" {
			warnLines = append(warnLines, l)
		}
	}
	warns := len(warnLines)
	t.Logf("WARN lines:\n%s", strings.Join(warnLines, "\n"))
	t.Logf("relay fds: %d before, peak %d, %d after the flood was refused; %d flood connections dialled in %v, %d refused and counted (over_limit_source), %d held open; %d handshake WARN lines",
		before, peak, during, flood, dialled.Round(time.Millisecond), refused, open, warns)
	if peak > before+perSource+4 {
		t.Errorf("relay fds peaked at %d, want <= %d (before %d + %d per source + 4 slack)", peak, before+perSource+4, before, perSource)
	}
	if refused != flood-perSource || open != perSource {
		t.Errorf("%d refused and %d held, want %d and %d", refused, open, flood-perSource, perSource)
	}
	if warns < 1 || warns > 3 {
		t.Errorf("%d handshake WARN lines for the flood, want 1..3 (rate-limited):\n%s", warns, stderr.String())
	}
}

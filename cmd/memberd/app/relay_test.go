package app

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/relayd"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay"
)

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// relayFixture writes a relay certificate, a dev key, two member CAs and a
// valid config into a temp dir.
type relayFixture struct {
	dir    string
	cas    map[string]*testpki.CA
	pin    string
	config string
}

func newRelayFixture(t *testing.T) *relayFixture {
	dir := t.TempDir()
	f := &relayFixture{dir: dir, cas: map[string]*testpki.CA{}}
	rc := testpki.SelfSigned(t, "relay-1").TLS()
	f.pin = relay.PinOf(rc.Leaf)
	writeFile(t, dir, "relay.crt", certPEM(rc.Leaf))
	der, err := x509.MarshalECPrivateKey(rc.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "relay.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	other := testpki.SelfSigned(t, "other").TLS()
	der2, _ := x509.MarshalECPrivateKey(other.PrivateKey.(*ecdsa.PrivateKey))
	writeFile(t, dir, "other.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der2}))
	for _, m := range []string{"bank-a", "bank-b"} {
		f.cas[m] = testpki.NewCA(t, m+"-ca")
		writeFile(t, dir, m+".pem", certPEM(f.cas[m].Cert))
	}
	f.config = `id: relay-1
listen: "127.0.0.1:0"
admin: "127.0.0.1:0"
certificate: relay.crt
key: relay.key
insecure_dev_key: true
policy:
  members:
    bank-a: {ca: [bank-a.pem]}
    bank-b: {ca: [bank-b.pem]}
  allow_all: true
  relays:
    - {id: relay-1, addr: "127.0.0.1:1", pin: "` + f.pin + `"}
`
	return f
}

// members connects an appliance of bank-a and one of bank-b to the
// fixture's relay at addr and waits until both are ready.
func (f *relayFixture) members(t *testing.T, addr string) map[string]*relay.Client {
	t.Helper()
	infos := []relay.RelayInfo{{ID: "relay-1", Addr: addr, Pin: f.pin}}
	clients := map[string]*relay.Client{}
	for _, m := range []string{"bank-a", "bank-b"} {
		c, err := relay.NewClient(relay.ClientConfig{Identity: f.cas[m].Issue(t, m).TLS(), Relays: infos, NoEnvProxy: true,
			BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		go c.Run(context.Background()) // until Close
		t.Cleanup(func() { c.Close() })
		clients[m] = c
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.WaitReady(ctx)
		cancel()
		if err != nil {
			t.Fatalf("member %s: %v", m, err)
		}
	}
	return clients
}

// sendUntilReceived sends payload from one client to another every 50ms
// until it arrives, or fails the test after timeout.
func sendUntilReceived(t *testing.T, from, to *relay.Client, fromID, toID, payload string, timeout time.Duration) {
	t.Helper()
	got := make(chan string, 100)
	go func() {
		buf := make([]byte, 2000)
		for {
			n, src, err := to.ReadPacket(buf)
			if err != nil {
				return
			}
			select {
			case got <- src + ":" + string(buf[:n]):
			default:
			}
			if src == fromID && string(buf[:n]) == payload {
				return
			}
		}
	}()
	deadline := time.After(timeout)
	for {
		_ = from.WritePacket([]byte(payload), toID)
		select {
		case g := <-got:
			if g == fromID+":"+payload {
				return
			}
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%q from %s did not reach %s within %v", payload, fromID, toID, timeout)
		}
	}
}

func TestRelayConfigErrors(t *testing.T) {
	f := newRelayFixture(t)
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"unknown key", "insecure_dev_key: true\n", "insecure_dev_key: true\nbogus: 1\n", fmt.Sprintf("bogus: line %d: unknown key", lineOf(f.config, "insecure_dev_key: true")+1)},
		{"dev key without opt-in", "insecure_dev_key: true\n", "", "key key: \"relay.key\" is not a PKCS#11 URI"},
		{"no id", "id: relay-1\n", "", "key id:"},
		{"bad listen", `listen: "127.0.0.1:0"`, `listen: "443"`, "key listen:"},
		{"bad admin", `admin: "127.0.0.1:0"`, `admin: "localhost"`, "key admin:"},
		{"no certificate", "certificate: relay.crt\n", "", "key certificate: required"},
		{"missing certificate file", "certificate: relay.crt", "certificate: nope.crt", "key certificate:"},
		{"missing CA file", "bank-b: {ca: [bank-b.pem]}", "bank-b: {ca: [gone.pem]}", "key policy.members.bank-b.ca"},
		{"member without CA", "bank-b: {ca: [bank-b.pem]}", "bank-b: {ca: []}", "key policy.members.bank-b.ca: at least one"},
		{"acl names stranger", "allow_all: true", "allow: [[bank-a, bank-z]]", "key policy.allow[0]: \"bank-z\""},
		{"bad pin", `pin: "sha256/`, `pin: "md5/`, "key policy.relays[0].pin"},
		{"self not listed", "id: relay-1\n", "id: relay-9\n", "this relay (id \"relay-9\") is not listed"},
		{"key does not match", "key: relay.key", "key: other.key", "key key:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := strings.Replace(f.config, tc.from, tc.to, 1)
			if cfg == f.config {
				t.Fatalf("fixture does not contain %q", tc.from)
			}
			p := writeFile(t, f.dir, "relay.yaml", []byte(cfg))
			code, _, stderr := run(t, "relay", "--config", p)
			if code != ExitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 and %q", code, stderr, tc.want)
			}
		})
	}
	code, _, stderr := run(t, "relay", "--config", filepath.Join(f.dir, "absent.yaml"))
	if code != ExitUsage || !strings.Contains(stderr, "absent.yaml") {
		t.Fatalf("missing config: exit %d, %q", code, stderr)
	}
}

// memberd relay from a config file: admin endpoints answer (pprof too, as
// admin_pprof is on), two members exchange packets through it, and a
// reload that removes a member cuts it off.
func TestRelayCommandRuns(t *testing.T) {
	f := newRelayFixture(t)
	cfgPath := writeFile(t, f.dir, "relay.yaml", []byte(f.config+"admin_pprof: true\n"))
	cfg, err := relayd.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	e := &env{stdout: io.Discard, stderr: io.Discard, log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := newRelay(e.log, cfgPath, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var addrs struct{ relay, admin string }
	select {
	case <-r.Ready():
		addrs.relay, addrs.admin = r.Addr(), r.AdminAddr()
	case err := <-done:
		t.Fatalf("relay exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not start")
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay returned %v", err)
		}
		if !strings.Contains(logs.String(), "relay listening") || !strings.Contains(logs.String(), f.pin) {
			t.Errorf("startup log lacks the pin: %s", logs.String())
		}
	}()

	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "", "/metrics": "memberd_relay_panics_total",
		"/debug/pprof/heap?debug=1": "heap profile:", "/debug/pprof/goroutine?debug=1": "goroutine profile:"} {
		resp, err := http.Get("http://" + addrs.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d %q", path, resp.StatusCode, b)
		}
	}

	clients := f.members(t, addrs.relay)
	sendUntilReceived(t, clients["bank-a"], clients["bank-b"], "bank-a", "bank-b", "ping", 5*time.Second)

	// 'memberd status' on the relay's real /status.
	code, out, errb := run(t, "status", "--admin", addrs.admin)
	if code != ExitOK || !strings.HasPrefix(out, "relay-1 (relay), listening on "+addrs.relay+", policy version ") ||
		!strings.Contains(out, "\nmembers connected (2): bank-a bank-b\n") {
		t.Errorf("memberd status: exit %d %s\n%s", code, errb, out)
	}

	// Reload without bank-a: it is cut off.
	cfgNoA := strings.Replace(f.config, "    bank-a: {ca: [bank-a.pem]}\n", "", 1)
	writeFile(t, f.dir, "relay.yaml", []byte(cfgNoA))
	r.Reload()
	waitUntil(t, 5*time.Second, func() bool { return clients["bank-a"].Status()[0].State != "up" })
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The relay's TLS key in a SoftHSM2 token, named by a PKCS#11 URI in
// relay.yaml: a member connects (the relay signs its handshakes in the HSM).
func TestRelayCommandHSMKey(t *testing.T) {
	f := newRelayFixture(t)
	tok := hsmtest.NewToken(t, "relay")
	signer := tok.NewKey(t, "tls")
	cert := testpki.NewCA(t, "relay-ca").Issue(t, "relay-1", testpki.Key(signer)).TLS()
	writeFile(t, f.dir, "relay-hsm.crt", certPEM(cert.Leaf))
	pin := relay.PinOf(cert.Leaf)
	cfgText := strings.NewReplacer(
		"certificate: relay.crt", "certificate: relay-hsm.crt",
		"key: relay.key\ninsecure_dev_key: true\n", "key: \""+tok.KeyURI("tls")+"\"\n",
		f.pin, pin,
	).Replace(f.config)
	cfgPath := writeFile(t, f.dir, "relay.yaml", []byte(cfgText))
	cfg, err := relayd.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{stdout: io.Discard, stderr: io.Discard, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := newRelay(e.log, cfgPath, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay returned %v", err)
		}
	}()
	var addrs struct{ relay, admin string }
	select {
	case <-r.Ready():
		addrs.relay, addrs.admin = r.Addr(), r.AdminAddr()
	case err := <-done:
		t.Fatalf("relay exited: %v", err)
	}
	c, err := relay.NewClient(relay.ClientConfig{Identity: f.cas["bank-a"].Issue(t, "bank-a").TLS(), NoEnvProxy: true,
		Relays: []relay.RelayInfo{{ID: "relay-1", Addr: addrs.relay, Pin: pin}}})
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(context.Background()) // until Close
	defer c.Close()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	if s := c.Status()[0]; s.Path != relay.PathQUIC {
		t.Fatalf("path %q, want quic", s.Path)
	}
}

// lineOf is the 1-based line on which sub first starts in s (0 if absent).
func lineOf(s, sub string) int {
	i := strings.Index(s, sub)
	if i < 0 {
		return 0
	}
	return strings.Count(s[:i], "\n") + 1
}

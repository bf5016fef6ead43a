package relay

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testenv"
)

// connectProxy is a small HTTP CONNECT proxy with basic auth, for tests.
type connectProxy struct {
	ln       net.Listener
	user     string
	pass     string
	connects atomic.Int32
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func startProxy(t *testing.T, user, pass string) *connectProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{ln: ln, user: user, pass: pass}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.track(c)
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.handle(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *connectProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *connectProxy) url() *url.URL {
	return &url.URL{Scheme: "http", Host: p.ln.Addr().String(), User: url.UserPassword(p.user, p.pass)}
}

func (p *connectProxy) handle(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.pass))
	if req.Method != http.MethodConnect {
		fmt.Fprint(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	if req.Header.Get("Proxy-Authorization") != want {
		fmt.Fprint(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\n\r\n")
		return
	}
	up, err := net.Dial("tcp", req.Host)
	if err != nil {
		fmt.Fprint(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	p.track(up)
	defer up.Close()
	p.connects.Add(1)
	fmt.Fprint(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{})
	go func() { io.Copy(up, br); up.Close(); close(done) }()
	io.Copy(c, up)
	c.Close()
	<-done
}

// With UDP blocked and a proxy configured, the client reaches the relay
// over TLS through the proxy, authenticating with basic auth.
func TestThroughConnectProxy(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	r.StopQUIC()
	px := startProxy(t, "alice", "s3cret")
	viaProxy := func(c *ClientConfig) { c.Proxy = px.url(); c.QUICTimeout = 200 * time.Millisecond }
	a, b := n.member("bank-a", viaProxy), n.member("bank-b", viaProxy)
	ra, rb := readAll(a), readAll(b)
	waitReady(t, a, b)
	for _, c := range []*Client{a, b} {
		if s := c.Status()[0]; s.Path != PathProxy {
			t.Fatalf("path %q, want proxy", s.Path)
		}
	}
	deliver(t, a, "bank-b", rb, "bank-a", "via-proxy", 5*time.Second)
	deliver(t, b, "bank-a", ra, "bank-b", "via-proxy-back", 5*time.Second)
	if got := px.connects.Load(); got < 2 {
		t.Fatalf("proxy saw %d CONNECTs, want 2", got)
	}
}

// A proxy refusal is reported verbatim, and HTTPS_PROXY is honoured when no
// proxy is configured.
func TestProxyErrorsVerbatimAndEnv(t *testing.T) {
	n := newTestNet(t, []string{"bank-a"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	r.StopQUIC()
	px := startProxy(t, "alice", "s3cret")
	bad := px.url()
	bad.User = url.UserPassword("alice", "wrong")
	c := n.member("bank-a", func(c *ClientConfig) { c.Proxy = bad; c.QUICTimeout = 200 * time.Millisecond })
	waitFor(t, 5*time.Second, "proxy error reported", func() bool {
		return strings.Contains(c.Status()[0].LastError, `"HTTP/1.1 407 Proxy Authentication Required"`)
	})
	t.Logf("client reports: %s", c.Status()[0].LastError)
	c.Close()

	// From the environment. httpproxy never proxies loopback addresses
	// (localhost is special there), so point the relay address at a name
	// that is not special but still resolves to loopback through the proxy.
	env := proxyFor(nil, func(u *url.URL) (*url.URL, error) {
		if u.Scheme != "https" || u.Host != "relay.example:443" {
			t.Errorf("proxy asked for %v", u)
		}
		return px.url(), nil
	})
	got, err := env("relay.example:443")
	if err != nil || got.String() != px.url().String() {
		t.Fatalf("proxyFor(env) = %v, %v", got, err)
	}
	t.Setenv("HTTPS_PROXY", "http://u:p@proxy.corp:3128")
	got, err = proxyFor(nil, envProxy())("relay.example:443")
	if err != nil || got == nil || got.Host != "proxy.corp:3128" || got.User.Username() != "u" {
		t.Fatalf("HTTPS_PROXY not honoured: %v, %v", got, err)
	}
}

// Integration: the real tinyproxy binary between client and relay.
func TestThroughTinyproxy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts tinyproxy; skipped under -short")
	}
	bin := testenv.Command(t, "tinyproxy", "tinyproxy")
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	r.StopQUIC()
	_, relayPort, _ := net.SplitHostPort(r.info.Addr)
	proxyAddr := freePort(t)
	_, proxyPort, _ := net.SplitHostPort(proxyAddr)
	dir := t.TempDir()
	conf := filepath.Join(dir, "tinyproxy.conf")
	cfg := strings.Join([]string{
		"Port " + proxyPort,
		"Listen 127.0.0.1",
		"Timeout 60",
		"MaxClients 10",
		"Allow 127.0.0.1",
		"ConnectPort " + relayPort,
		"BasicAuth alice s3cret",
		"LogLevel Info",
		"LogFile \"" + filepath.Join(dir, "tinyproxy.log") + "\"",
		"PidFile \"" + filepath.Join(dir, "tinyproxy.pid") + "\"",
	}, "\n") + "\n"
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-c", conf) // -d: stay in the foreground
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting tinyproxy: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by PID: only the process this test started
		_ = cmd.Wait()
		if b, err := os.ReadFile(filepath.Join(dir, "tinyproxy.log")); err == nil && t.Failed() {
			t.Logf("tinyproxy log:\n%s", b)
		}
	})
	waitFor(t, 5*time.Second, "tinyproxy listening", func() bool {
		c, err := net.Dial("tcp", proxyAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	pu := &url.URL{Scheme: "http", Host: proxyAddr, User: url.UserPassword("alice", "s3cret")}
	viaProxy := func(c *ClientConfig) { c.Proxy = pu; c.QUICTimeout = 200 * time.Millisecond }
	a, b := n.member("bank-a", viaProxy), n.member("bank-b", viaProxy)
	rb := readAll(b)
	waitReady(t, a, b)
	if s := a.Status()[0]; s.Path != PathProxy {
		t.Fatalf("path %q, want proxy", s.Path)
	}
	deliver(t, a, "bank-b", rb, "bank-a", "via-tinyproxy", 5*time.Second)

	// Wrong password: tinyproxy's refusal comes back verbatim (tinyproxy
	// 1.11 answers CONNECT with 401, not 407).
	bad := *pu
	bad.User = url.UserPassword("alice", "wrong")
	c := n.member("bank-a", func(c *ClientConfig) { c.Proxy = &bad; c.QUICTimeout = 200 * time.Millisecond })
	waitFor(t, 5*time.Second, "tinyproxy refusal reported", func() bool {
		e := c.Status()[0].LastError
		return strings.Contains(e, `answered CONNECT`) && (strings.Contains(e, ` 407 `) || strings.Contains(e, ` 401 Unauthorized"`))
	})
	t.Logf("client reports: %s", c.Status()[0].LastError)
}

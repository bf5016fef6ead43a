package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay/relaytest"
)

// testNet is a consortium on loopback: member CAs, relays, clients.
type testNet struct {
	t       testing.TB
	cas     map[string]*testpki.CA
	relayID map[string]tls.Certificate
	infos   []RelayInfo
	relays  map[string]*testRelay
	allow   [][2]string
	all     bool
	noQUIC  map[string]bool // relays started with UDP blocked
}

func newTestNet(t testing.TB, members []string, relays []string) *testNet {
	n := &testNet{t: t, cas: map[string]*testpki.CA{}, relayID: map[string]tls.Certificate{},
		relays: map[string]*testRelay{}, all: true}
	for _, m := range members {
		n.cas[m] = testpki.NewCA(t, m+"-ca")
	}
	for _, id := range relays {
		cert := testpki.SelfSigned(t, id).TLS()
		n.relayID[id] = cert
		n.infos = append(n.infos, RelayInfo{ID: id, Addr: freePort(t), Pin: PinOf(cert.Leaf)})
	}
	return n
}

// freePort returns 127.0.0.1:P where P is free on both TCP and UDP.
func freePort(t testing.TB) string { return relaytest.FreePort(t) }

func (n *testNet) authority(drop ...string) *StaticAuthority {
	cas := map[string][]*x509.Certificate{}
	for m, ca := range n.cas {
		if !contains(drop, m) {
			cas[m] = []*x509.Certificate{ca.Cert}
		}
	}
	var allow [][2]string
	for _, p := range n.allow {
		if !contains(drop, p[0]) && !contains(drop, p[1]) {
			allow = append(allow, p)
		}
	}
	a, err := NewStaticAuthority(StaticPolicy{MemberCAs: cas, Allow: allow, AllowAll: n.all, Relays: n.infos})
	if err != nil {
		n.t.Fatal(err)
	}
	return a
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// testRelay is one relay of a testNet: relaytest.Relay owns its sockets
// (StopQUIC, Crash, Stop) as cmd would.
type testRelay struct {
	*relaytest.Relay
	info RelayInfo
	srv  *Server
}

func (n *testNet) startRelay(id string, tweak func(*ServerConfig)) *testRelay {
	t := n.t
	var info RelayInfo
	for _, r := range n.infos {
		if r.ID == id {
			info = r
		}
	}
	cfg := ServerConfig{ID: id, Identity: n.relayID[id], Authority: n.authority(), Logger: testLogger(t).With("relay", id),
		Mesh: ClientConfig{QUICTimeout: 500 * time.Millisecond, BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond}}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &testRelay{Relay: relaytest.Start(t, info.Addr, srv, relaytest.Options{NoQUIC: n.noQUIC[id]}), info: info, srv: srv}
	r.Go(func(ctx context.Context) { srv.RunMesh(ctx) })
	n.relays[id] = r
	return r
}

// member returns a client for member m with a certificate from its CA.
func (n *testNet) member(m string, tweak func(*ClientConfig)) *Client {
	return n.client(n.cas[m].Issue(n.t, m+"-appliance").TLS(), tweak)
}

func (n *testNet) client(id tls.Certificate, tweak func(*ClientConfig)) *Client {
	t := n.t
	cfg := ClientConfig{Identity: id, Relays: n.infos, QUICTimeout: 500 * time.Millisecond,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond, NoEnvProxy: true,
		Logger: testLogger(t)}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(context.Background()) // until Close
	t.Cleanup(func() { c.Close() })
	return c
}

func waitReady(t testing.TB, cs ...*Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range cs {
		if err := c.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reader collects what a client receives, in the background.
type reader struct {
	mu   sync.Mutex
	got  map[string][]string // from -> payloads
	at   []time.Time         // arrival times, all senders
	done chan struct{}
}

func readAll(c *Client) *reader {
	r := &reader{got: map[string][]string{}, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 70000)
		for {
			n, from, err := c.ReadPacket(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			r.mu.Lock()
			r.got[from] = append(r.got[from], string(buf[:n]))
			r.at = append(r.at, time.Now())
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *reader) has(from, payload string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.got[from] {
		if p == payload {
			return true
		}
	}
	return false
}

func (r *reader) count(from string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[from])
}

// deliver sends numbered packets from c to member until r has one of them
// (packets are unreliable; the first sends may race a path change).
func deliver(t testing.TB, c *Client, member string, r *reader, from, tag string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for i := 0; ; i++ {
		p := tag + "-" + strconv.Itoa(i)
		_ = c.WritePacket([]byte(p), member)
		time.Sleep(5 * time.Millisecond)
		r.mu.Lock()
		for _, g := range r.got[from] {
			if len(g) > len(tag) && g[:len(tag)+1] == tag+"-" {
				r.mu.Unlock()
				return time.Since(start)
			}
		}
		r.mu.Unlock()
		if time.Since(start) > timeout {
			t.Fatalf("%s: no packet %s -> %s within %v; sender status %s", tag, from, member, timeout, fmtStatus(c.Status()))
		}
	}
}

func fmtStatus(ss []RelayStatus) string {
	var b bytes.Buffer
	for _, s := range ss {
		fmt.Fprintf(&b, "[%s %s path=%s healthy=%v active=%v err=%q] ", s.ID, s.State, s.Path, s.Healthy, s.Active, s.LastError)
	}
	return b.String()
}

type tlsCert = tls.Certificate
type x509Cert = x509.Certificate

func itoa(i int) string { return strconv.Itoa(i) }

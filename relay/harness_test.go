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

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/relay/relaytest"
)

// testNet is a consortium on loopback: member CAs, relays, clients.
type testNet struct {
	t       testing.TB
	cas     map[string]*relaytest.CA
	relayID map[string]tls.Certificate
	infos   []RelayInfo
	relays  map[string]*testRelay
	allow   [][2]string
	all     bool
	noQUIC  map[string]bool // relays started with UDP blocked
}

func newTestNet(t testing.TB, members []string, relays []string) *testNet {
	n := &testNet{t: t, cas: map[string]*relaytest.CA{}, relayID: map[string]tls.Certificate{},
		relays: map[string]*testRelay{}, all: true}
	for _, m := range members {
		n.cas[m] = relaytest.NewCA(t, m+"-ca")
	}
	for _, id := range relays {
		cert := relaytest.SelfSigned(t, id)
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

// testRelay is one relay with its sockets, owned by the test as cmd would.
type testRelay struct {
	t      testing.TB
	info   RelayInfo
	srv    *Server
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	udp   net.PacketConn
	ql    *quic.Listener
	tl    net.Listener
	conns []net.Conn // accepted TCP connections, closed raw by crash
}

// trackingListener records the connections it accepts.
type trackingListener struct {
	net.Listener
	r *testRelay
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.r.mu.Lock()
		l.r.conns = append(l.r.conns, c)
		l.r.mu.Unlock()
	}
	return c, err
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
	r := &testRelay{t: t, info: info, srv: srv}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.startTCP()
	if !n.noQUIC[id] {
		r.startQUIC()
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); srv.RunMesh(r.ctx) }()
	n.relays[id] = r
	t.Cleanup(r.stop)
	return r
}

func (r *testRelay) startTCP() {
	tl, err := net.Listen("tcp", r.info.Addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.tl = tl
	r.mu.Unlock()
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.srv.ServeTCP(r.ctx, trackingListener{tl, r}) }()
}

func (r *testRelay) startQUIC() {
	udp, err := net.ListenPacket("udp", r.info.Addr)
	if err != nil {
		r.t.Fatal(err)
	}
	ql, err := quic.Listen(udp, r.srv.TLSConfig(), r.srv.QUICConfig())
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.udp, r.ql = udp, ql
	r.mu.Unlock()
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.srv.ServeQUIC(r.ctx, ql) }()
}

// stopQUIC closes the UDP socket as a firewall dropping UDP would look:
// established QUIC connections just go silent.
func (r *testRelay) stopQUIC() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ql != nil {
		r.ql.Close()
		r.udp.Close()
		r.ql, r.udp = nil, nil
	}
}

// crash makes the relay vanish without telling anyone, as kill -9 does:
// sockets closed, no QUIC CONNECTION_CLOSE sent (the UDP socket is gone
// first), TCP connections closed by the kernel without a GOAWAY.
func (r *testRelay) crash() {
	r.stopQUIC()
	r.mu.Lock()
	if r.tl != nil {
		r.tl.Close()
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.srv.Close()
}

func (r *testRelay) stop() {
	r.crash()
	r.cancel()
	r.wg.Wait()
}

// member returns a client for member m with a certificate from its CA.
func (n *testNet) member(m string, tweak func(*ClientConfig)) *Client {
	return n.client(n.cas[m].Issue(n.t, m+"-appliance"), tweak)
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

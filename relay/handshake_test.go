package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/internal/testpki"
)

// fdCount is the number of open file descriptors of this process.
func fdCount(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(es)
}

// floodTCP opens n TCP connections from src to addr that never send a
// byte, and returns them (the caller closes them).
func floodTCP(t testing.TB, src, addr string, n int) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("flood connection %d from %s: %v", len(conns), src, err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// closedByPeer reports whether the relay closed c within wait.
func closedByPeer(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// startQUICTransport serves QUIC for r through Server.QUICTransport, as
// memberd relay does.
func startQUICTransport(t testing.TB, r *testRelay) {
	t.Helper()
	udp, err := net.ListenPacket("udp", r.info.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tr := r.srv.QUICTransport(udp)
	ln, err := tr.Listen(r.srv.TLSConfig(), r.srv.QUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	r.Go(func(ctx context.Context) { defer close(done); r.srv.ServeQUIC(ctx, ln) })
	t.Cleanup(func() { ln.Close(); tr.Close(); udp.Close(); <-done })
}

func TestHandshakeFloodOneSourceTCP(t *testing.T) {
	const perSource, flood = 8, 600
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	n.noQUIC = map[string]bool{"relay-1": true}
	r := n.startRelay("relay-1", func(c *ServerConfig) {
		c.MaxHandshakesPerSource, c.MaxHandshakes, c.HandshakeTimeout = perSource, 64, 1500*time.Millisecond
	})
	before := fdCount(t)
	t0 := time.Now()
	conns := floodTCP(t, "127.0.0.2", r.info.Addr, flood)
	// The surplus is closed in the accept loop: wait until it all was.
	waitFor(t, 5*time.Second, "surplus counted", func() bool {
		return r.srv.HandshakeFailures()[HandshakeFailOverLimitSource] >= flood-perSource
	})
	// This process holds the flood's own ends; what the relay holds is
	// the rest.
	relayFDs := fdCount(t) - before - flood
	t.Logf("flood of %d idle TCP connections from one source: relay holds %d fds, %d in handshake, failures %v, %v after the first dial",
		flood, relayFDs, r.srv.HandshakesInProgress(), r.srv.HandshakeFailures(), time.Since(t0).Round(time.Millisecond))
	if relayFDs > perSource+2 {
		t.Errorf("relay holds %d fds for the flood, want <= %d (+2 slack)", relayFDs, perSource)
	}
	if got := r.srv.HandshakesInProgress(); got != perSource {
		t.Errorf("%d handshakes in progress, want %d", got, perSource)
	}
	if got := r.srv.HandshakeFailures()[HandshakeFailOverLimitSource]; got != flood-perSource {
		t.Errorf("over_limit_source = %d, want %d", got, flood-perSource)
	}
	open := 0
	for _, c := range conns {
		if !closedByPeer(c, 5*time.Millisecond) {
			open++
		}
	}
	if open != perSource {
		t.Errorf("%d flood connections still open, want %d (the rest closed at once)", open, perSource)
	}

	// A member from another address gets in while the flood's slots are
	// held, over TCP (the relay serves no QUIC here).
	a, b := n.member("bank-a", nil), n.member("bank-b", nil)
	waitReady(t, a, b)
	rb := readAll(b)
	deliver(t, a, "bank-b", rb, "bank-a", "during-flood", 5*time.Second)

	// The held ones end at the handshake timeout, counted.
	waitFor(t, 4*time.Second, "held flood connections timed out", func() bool {
		return r.srv.HandshakeFailures()[HandshakeFailTimeout] >= perSource
	})
	if got := r.srv.HandshakesInProgress(); got != 0 {
		t.Errorf("%d handshakes in progress after the timeout, want 0", got)
	}
}

func TestHandshakeFloodTotalTCP(t *testing.T) {
	const perSource, total = 8, 24
	n := newTestNet(t, []string{"bank-a"}, []string{"relay-1"})
	n.noQUIC = map[string]bool{"relay-1": true}
	r := n.startRelay("relay-1", func(c *ServerConfig) {
		c.MaxHandshakesPerSource, c.MaxHandshakes, c.HandshakeTimeout = perSource, total, 2*time.Second
	})
	before := fdCount(t)
	held := 0
	for _, src := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"} {
		floodTCP(t, src, r.info.Addr, 20)
		held += 20
	}
	waitFor(t, 5*time.Second, "surplus counted", func() bool {
		f := r.srv.HandshakeFailures()
		return f[HandshakeFailOverLimitSource]+f[HandshakeFailOverLimitTotal] >= uint64(held-total)
	})
	relayFDs := fdCount(t) - before - held
	f := r.srv.HandshakeFailures()
	t.Logf("%d idle connections from 5 sources: relay holds %d fds, failures %v", held, relayFDs, f)
	if relayFDs > total+2 {
		t.Errorf("relay holds %d fds, want <= %d (+2 slack)", relayFDs, total)
	}
	if f[HandshakeFailOverLimitTotal] == 0 || f[HandshakeFailOverLimitSource]+f[HandshakeFailOverLimitTotal] != uint64(held-total) {
		t.Errorf("failures %v: want over_limit_total > 0 and %d refused in all", f, held-total)
	}
}

// TestHandshakeFailureReasons: each kind of bad client is refused and
// counted under its reason, on the TCP path and on QUIC.
func TestHandshakeFailureReasons(t *testing.T) {
	n := newTestNet(t, []string{"bank-a"}, []string{"relay-1"})
	n.noQUIC = map[string]bool{"relay-1": true}
	r := n.startRelay("relay-1", func(c *ServerConfig) { c.HandshakeTimeout = 500 * time.Millisecond })
	startQUICTransport(t, r)
	stranger := testpki.NewCA(t, "stranger-ca").Issue(t, "stranger").TLS()
	revoked := n.cas["bank-a"].Issue(t, "stolen").TLS()
	expired := n.cas["bank-a"].Issue(t, "expired", testpki.Valid(time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))).TLS()
	auth, err := NewStaticAuthority(StaticPolicy{MemberCAs: map[string][]*x509.Certificate{"bank-a": {n.cas["bank-a"].Cert}},
		AllowAll: true, Relays: n.infos, Revoked: []*x509.Certificate{revoked.Leaf}})
	if err != nil {
		t.Fatal(err)
	}
	r.srv.UpdateAuthority(auth)
	tlsCfg := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"memberd/1"}, Certificates: certs, MinVersion: tls.VersionTLS13}
	}
	cases := []struct {
		name, reason string
		try          func() error
	}{
		{"tcp random bytes", HandshakeFailTLSError, func() error {
			c, err := net.Dial("tcp", r.info.Addr)
			if err != nil {
				return err
			}
			defer c.Close()
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			_, err = io.ReadAll(c)
			return err
		}},
		{"tcp no certificate", HandshakeFailNoCertificate, func() error {
			c, err := tls.Dial("tcp", r.info.Addr, tlsCfg())
			if err == nil {
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			return err
		}},
		{"tcp unknown CA", HandshakeFailUnknownCA, func() error {
			c, err := tls.Dial("tcp", r.info.Addr, tlsCfg(stranger))
			if err == nil {
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			return err
		}},
		{"tcp revoked", HandshakeFailRevoked, func() error {
			c, err := tls.Dial("tcp", r.info.Addr, tlsCfg(revoked))
			if err == nil {
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			return err
		}},
		{"tcp expired", HandshakeFailExpired, func() error {
			c, err := tls.Dial("tcp", r.info.Addr, tlsCfg(expired))
			if err == nil {
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			return err
		}},
		{"tcp bad HELLO", HandshakeFailBadFrame, func() error {
			c, err := tls.Dial("tcp", r.info.Addr, tlsCfg(n.cas["bank-a"].Issue(t, "a").TLS()))
			if err != nil {
				return err
			}
			defer c.Close()
			c.Write([]byte{0xff, 0xff, 0, 4, 1, 2, 3, 4})
			_, err = io.ReadAll(c)
			return err
		}},
		{"tcp silent after TLS", HandshakeFailTimeout, func() error {
			c, err := tls.Dial("tcp", r.info.Addr, tlsCfg(n.cas["bank-a"].Issue(t, "a").TLS()))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = io.ReadAll(c)
			return err
		}},
		{"quic unknown CA", HandshakeFailUnknownCA, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := quic.DialAddr(ctx, r.info.Addr, tlsCfg(stranger), &quic.Config{})
			if err == nil {
				_, err = c.AcceptStream(ctx)
			}
			return err
		}},
		{"quic no control stream", HandshakeFailTimeout, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := quic.DialAddr(ctx, r.info.Addr, tlsCfg(n.cas["bank-a"].Issue(t, "a").TLS()), &quic.Config{})
			if err == nil {
				_, err = c.AcceptStream(ctx)
			}
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			was := r.srv.HandshakeFailures()[tc.reason]
			err := tc.try()
			t.Logf("client saw: %v", err)
			waitFor(t, 3*time.Second, tc.reason+" counted", func() bool { return r.srv.HandshakeFailures()[tc.reason] > was })
		})
	}
	if t.Failed() {
		return
	}
	// Nothing was counted twice: one failure per case.
	var sum uint64
	for _, v := range r.srv.HandshakeFailures() {
		sum += v
	}
	if sum != uint64(len(cases)) {
		t.Errorf("failures %v: %d in all, want %d (one per case)", r.srv.HandshakeFailures(), sum, len(cases))
	}
}

// muteConn lets the first datagram out and nothing after: a QUIC client
// that sends one Initial and goes silent, as a flood of spoofed Initials
// looks to the relay.
type muteConn struct {
	net.PacketConn
	mu   sync.Mutex
	sent bool
}

func (c *muteConn) WriteTo(b []byte, a net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sent {
		return len(b), nil
	}
	c.sent = true
	return c.PacketConn.WriteTo(b, a)
}

// TestHandshakeFloodQUIC: silent QUIC clients (one Initial each, as
// spoofed Initials look) from one source hold at most MaxHandshakesPerSource
// slots; and once half of MaxHandshakes are taken, new clients must answer
// a Retry first, which silent or spoofed ones never do, so members still
// get in.
func TestHandshakeFloodQUIC(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		perSource, total, flood int
		maxHeld                 int
		refused                 uint64 // counted over_limit_source
	}{
		{"per source", 4, 64, 40, 4, 36},
		{"retry past half of the total", 8, 8, 40, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
			n.noQUIC = map[string]bool{"relay-1": true}
			r := n.startRelay("relay-1", func(c *ServerConfig) {
				c.MaxHandshakesPerSource, c.MaxHandshakes, c.HandshakeTimeout = tc.perSource, tc.total, 2*time.Second
			})
			startQUICTransport(t, r)
			raddr, _ := net.ResolveUDPAddr("udp", r.info.Addr)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			t.Cleanup(func() { cancel(); wg.Wait() })
			for range tc.flood {
				udp, err := net.ListenPacket("udp", "127.0.0.2:0")
				if err != nil {
					t.Fatal(err)
				}
				tr := &quic.Transport{Conn: &muteConn{PacketConn: udp}}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer udp.Close()
					defer tr.Close()
					_, _ = tr.Dial(ctx, raddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"memberd/1"}}, &quic.Config{})
				}()
			}
			waitFor(t, 5*time.Second, "QUIC surplus refused", func() bool {
				return r.srv.HandshakeFailures()[HandshakeFailOverLimitSource] >= tc.refused && r.srv.HandshakesInProgress() >= tc.maxHeld
			})
			time.Sleep(200 * time.Millisecond) // let stragglers arrive
			t.Logf("flood of %d silent QUIC clients from one source: %d in handshake, failures %v",
				tc.flood, r.srv.HandshakesInProgress(), r.srv.HandshakeFailures())
			if got := r.srv.HandshakesInProgress(); got > tc.maxHeld {
				t.Errorf("%d QUIC handshakes in progress, want <= %d", got, tc.maxHeld)
			}
			if got := r.srv.HandshakeFailures()[HandshakeFailOverLimitSource]; got != tc.refused {
				t.Errorf("over_limit_source = %d, want %d", got, tc.refused)
			}
			a, b := n.member("bank-a", nil), n.member("bank-b", nil)
			waitReady(t, a, b)
			for _, st := range a.Status() {
				if st.Path != PathQUIC {
					t.Errorf("member a reached %s over %q during the flood, want quic", st.ID, st.Path)
				}
			}
			rb := readAll(b)
			deliver(t, a, "bank-b", rb, "bank-a", "during-quic-flood", 5*time.Second)
			waitFor(t, 5*time.Second, "silent QUIC handshakes timed out", func() bool {
				return r.srv.HandshakeFailures()[HandshakeFailTimeout] >= uint64(tc.maxHeld) && r.srv.HandshakesInProgress() == 0
			})
		})
	}
}

func TestHandshakeLogRateLimited(t *testing.T) {
	var lines int
	var mu sync.Mutex
	h := newHandshakeLog(testLoggerCount(t, &mu, &lines), nil)
	t0 := time.Unix(1000, 0)
	for i := range 10_000 {
		h.fail(HandshakeFailOverLimitSource, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: i}, nil, t0.Add(time.Duration(i)*time.Millisecond))
	}
	// 10,000 failures over 10s: one line at the start, one after 10s.
	mu.Lock()
	defer mu.Unlock()
	if lines < 1 || lines > 2 {
		t.Fatalf("%d WARN lines for 10,000 failures in 10s, want 1..2", lines)
	}
	if got := h.counter.snapshot()[HandshakeFailOverLimitSource]; got != 10_000 {
		t.Fatalf("counted %d, want 10000", got)
	}
}

func TestHandshakeGate(t *testing.T) {
	g := newHandshakeGate(2, 3)
	a1 := &net.TCPAddr{IP: net.ParseIP("192.0.2.1")}
	v6a := &net.TCPAddr{IP: net.ParseIP("2001:db8::1")}
	v6b := &net.TCPAddr{IP: net.ParseIP("2001:db8::2")} // same /64
	steps := []struct {
		addr *net.TCPAddr
		want string
	}{
		{a1, ""}, {a1, ""}, {a1, HandshakeFailOverLimitSource},
		{v6a, ""}, {v6b, HandshakeFailOverLimitTotal},
	}
	var rel []func()
	for i, s := range steps {
		r, refused := g.acquire(s.addr)
		if refused != s.want {
			t.Fatalf("step %d (%v): refused %q, want %q", i, s.addr, refused, s.want)
		}
		if r != nil {
			rel = append(rel, r)
		}
	}
	rel[0]()
	rel[0]() // idempotent
	// Room again in the total: the second address of the /64 gets in.
	if r, refused := g.acquire(v6b); refused != "" {
		t.Fatalf("after a release: refused %q", refused)
	} else {
		r()
	}
	if g.inProgress() != 2 {
		t.Fatalf("in progress %d, want 2", g.inProgress())
	}
}

type countWriter struct {
	mu    *sync.Mutex
	lines *int
	t     testing.TB
}

func (w countWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	*w.lines++
	w.mu.Unlock()
	w.t.Log(string(p))
	return len(p), nil
}

func testLoggerCount(t testing.TB, mu *sync.Mutex, lines *int) *slog.Logger {
	return slog.New(slog.NewTextHandler(countWriter{mu, lines, t}, nil))
}

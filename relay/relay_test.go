package relay

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay/wire"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(relayChild())
	}
	goleak.VerifyTestMain(m)
}

// Three members, two relays, all on QUIC: every pair exchanges packets and
// every client is connected to both relays at once.
func TestQUICBetweenMembers(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b", "bank-c"}, []string{"relay-1", "relay-2"})
	n.startRelay("relay-1", nil)
	n.startRelay("relay-2", nil)
	cs := map[string]*Client{}
	rs := map[string]*reader{}
	// This test is about QUIC, not about how fast a client gives up on it:
	// under -race on a loaded machine a QUIC handshake plus HELLO took
	// longer than the harness's 500 ms and the members settled on TCP.
	// Nor about the move of a silent QUIC link to TCP (hedgeTCP): a CI run
	// under -race at load 27 saw a QUIC link quiet for 600 ms and moved;
	// silence is tolerated for 3 s here, and a wrong move is re-probed
	// every second.
	patient := func(c *ClientConfig) {
		c.QUICTimeout = 5 * time.Second
		c.DeadAfter = 6 * time.Second
		c.ReprobeInterval = time.Second
	}
	for _, m := range []string{"bank-a", "bank-b", "bank-c"} {
		cs[m] = n.member(m, patient)
		rs[m] = readAll(cs[m])
	}
	waitReady(t, cs["bank-a"], cs["bank-b"], cs["bank-c"])
	for from, c := range cs {
		for to := range cs {
			if from != to {
				deliver(t, c, to, rs[to], from, "hello-from-"+from, 5*time.Second)
			}
		}
	}
	for m, c := range cs {
		waitFor(t, 15*time.Second, m+" on both relays over QUIC", func() bool {
			for _, s := range c.Status() {
				if s.State != "up" || s.Path != PathQUIC || !s.Healthy || s.RTT <= 0 || s.BytesOut == 0 {
					t.Logf("%s: %+v", m, s)
					return false
				}
			}
			return true
		})
		st := c.Status()
		if !st[0].Active || st[1].Active {
			t.Errorf("%s: status %s: want relay-1 (the first) active", m, fmtStatus(st))
		}
		// Larger packets than a datagram travel on the stream: the QUIC
		// path reports the same limit as TCP (issue #15).
		if got := c.MaxPacketSize(); got != MaxPacketSizeTCP {
			t.Errorf("%s: MaxPacketSize on QUIC = %d, want %d", m, got, MaxPacketSizeTCP)
		}
	}
	// A packet larger than a QUIC datagram still arrives: it falls back
	// to the control stream.
	big := bytes.Repeat([]byte{0xab}, 3000)
	if err := cs["bank-a"].WritePacket(big, "bank-b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "3000-byte packet", func() bool { return rs["bank-b"].has("bank-a", string(big)) })
}

// Members attached to different relays reach each other through the mesh,
// one hop.
func TestMeshOneHop(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	r1 := n.startRelay("relay-1", nil)
	r2 := n.startRelay("relay-2", nil)
	a := n.member("bank-a", func(c *ClientConfig) { c.Relays = c.Relays[:1] })
	b := n.member("bank-b", func(c *ClientConfig) { c.Relays = c.Relays[1:] })
	ra, rb := readAll(a), readAll(b)
	waitReady(t, a, b)
	deliver(t, a, "bank-b", rb, "bank-a", "a-to-b", 5*time.Second)
	deliver(t, b, "bank-a", ra, "bank-b", "b-to-a", 5*time.Second)
	if got := r1.srv.Members(); len(got) != 1 || got[0] != "bank-a" {
		t.Errorf("relay-1 members = %v, want [bank-a]", got)
	}
	if got := r2.srv.Members(); len(got) != 1 || got[0] != "bank-b" {
		t.Errorf("relay-2 members = %v, want [bank-b]", got)
	}
}

// The mesh survives a relay restart: the dialling relay reconnects (here
// over TCP, the restarted relay's UDP being blocked) and routes are
// re-announced.
func TestMeshRecoversAfterRestart(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	n.startRelay("relay-1", nil)
	r2 := n.startRelay("relay-2", nil)
	fast := func(c *ClientConfig) { c.QUICTimeout = 200 * time.Millisecond }
	a := n.member("bank-a", func(c *ClientConfig) { fast(c); c.Relays = c.Relays[:1] })
	b := n.member("bank-b", func(c *ClientConfig) { fast(c); c.Relays = c.Relays[1:] })
	rb := readAll(b)
	waitReady(t, a, b)
	deliver(t, a, "bank-b", rb, "bank-a", "before-restart", 5*time.Second)

	r2.Stop()
	n.noQUIC = map[string]bool{"relay-2": true}
	n.startRelay("relay-2", nil)
	waitFor(t, 10*time.Second, "bank-b back on relay-2 over TCP", func() bool {
		s := b.Status()[0]
		return s.Healthy && s.Path == PathTCP
	})
	deliver(t, a, "bank-b", rb, "bank-a", "after-restart", 10*time.Second)
}

// With UDP dead the client uses TLS over TCP on the same port; when UDP
// works again a re-probe moves it back to QUIC.
func TestTCPFallbackAndReprobe(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	r.StopQUIC()
	fast := func(c *ClientConfig) {
		c.QUICTimeout = 200 * time.Millisecond
		c.ReprobeInterval = 300 * time.Millisecond
	}
	a, b := n.member("bank-a", fast), n.member("bank-b", fast)
	ra, rb := readAll(a), readAll(b)
	waitReady(t, a, b)
	for _, c := range []*Client{a, b} {
		if s := c.Status()[0]; s.Path != PathTCP {
			t.Fatalf("with UDP off: path %q, want tcp (%+v)", s.Path, s)
		}
		if got := c.MaxPacketSize(); got != MaxPacketSizeTCP {
			t.Errorf("MaxPacketSize on TCP = %d, want %d", got, MaxPacketSizeTCP)
		}
	}
	deliver(t, a, "bank-b", rb, "bank-a", "over-tcp", 5*time.Second)
	deliver(t, b, "bank-a", ra, "bank-b", "over-tcp-back", 5*time.Second)

	r.StartQUIC()
	for _, c := range []*Client{a, b} {
		waitFor(t, 5*time.Second, "move back to QUIC", func() bool {
			s := c.Status()[0]
			return s.Path == PathQUIC && s.Upgrades == 1 && s.Healthy
		})
	}
	deliver(t, a, "bank-b", rb, "bank-a", "over-quic", 5*time.Second)
}

// A certificate from a CA outside the policy, and a revoked member
// certificate, are refused in the handshake: no forwarding state exists.
func TestNonMemberRefused(t *testing.T) {
	n := newTestNet(t, []string{"bank-a"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	stranger := testpki.NewCA(t, "stranger-ca").Issue(t, "mallory").TLS()
	tests := []struct {
		name string
		cert func() tlsCert
		auth func(leaf tlsCert) *StaticAuthority
	}{
		{"unknown CA", func() tlsCert { return stranger }, nil},
		{"revoked", func() tlsCert { return n.cas["bank-a"].Issue(t, "stolen").TLS() }, func(leaf tlsCert) *StaticAuthority {
			a, err := NewStaticAuthority(StaticPolicy{
				MemberCAs: map[string][]*x509Cert{"bank-a": {n.cas["bank-a"].Cert}},
				Revoked:   []*x509Cert{leaf.Leaf}, AllowAll: true, Relays: n.infos})
			if err != nil {
				t.Fatal(err)
			}
			return a
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := tt.cert()
			if tt.auth != nil {
				r.srv.UpdateAuthority(tt.auth(cert))
			}
			c := n.client(cert, func(c *ClientConfig) { c.QUICTimeout = 300 * time.Millisecond; c.TCPTimeout = time.Second })
			time.Sleep(1500 * time.Millisecond)
			s := c.Status()[0]
			if s.State == "up" || s.Healthy {
				t.Fatalf("refused client is %s", s.State)
			}
			if s.LastError == "" {
				t.Errorf("no error reported to the refused client")
			}
			t.Logf("refused client sees: %s", s.LastError)
			if m := r.srv.Members(); len(m) != 0 {
				t.Errorf("relay holds state for %v", m)
			}
			if err := c.WritePacket([]byte("x"), "bank-a"); !errors.Is(err, ErrNoRelay) {
				t.Errorf("WritePacket on a refused client: %v, want ErrNoRelay", err)
			}
			c.Close()
		})
	}
}

// An ACL-denied pair gets nothing, in either direction the ACL denies, and
// the drops are counted with reason acl.
func TestACLDenied(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b", "bank-c"}, []string{"relay-1"})
	n.all = false
	n.allow = [][2]string{{"bank-a", "bank-b"}, {"bank-b", "bank-a"}, {"bank-a", "bank-c"}}
	r := n.startRelay("relay-1", nil)
	a, b, c := n.member("bank-a", nil), n.member("bank-b", nil), n.member("bank-c", nil)
	ra, _, rc := readAll(a), readAll(b), readAll(c)
	waitReady(t, a, b, c)
	deliver(t, a, "bank-c", rc, "bank-a", "allowed", 5*time.Second)
	for i := 0; i < 50; i++ {
		_ = b.WritePacket([]byte("denied"), "bank-c")
		_ = c.WritePacket([]byte("denied"), "bank-a")
	}
	// a->c is allowed, so a packet after the denied ones proves they had
	// time to arrive.
	deliver(t, a, "bank-c", rc, "bank-a", "after", 5*time.Second)
	waitFor(t, 2*time.Second, "100 acl drops", func() bool { return r.srv.Drops()[DropACL] >= 100 })
	if rc.count("bank-b") != 0 || ra.count("bank-c") != 0 {
		t.Fatalf("denied packets arrived: c got %d from b, a got %d from c", rc.count("bank-b"), ra.count("bank-c"))
	}
	// ACL change applies to the next packet.
	n.allow = append(n.allow, [2]string{"bank-c", "bank-a"})
	r.srv.UpdateAuthority(n.authority())
	deliver(t, c, "bank-a", ra, "bank-c", "now-allowed", 5*time.Second)
}

// A member removed from the policy is cut off at once: its connections
// close, nothing more reaches it or comes from it.
func TestUpdateAuthorityCutsOff(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b", "bank-c"}, []string{"relay-1", "relay-2"})
	r1, r2 := n.startRelay("relay-1", nil), n.startRelay("relay-2", nil)
	a, c := n.member("bank-a", nil), n.member("bank-c", nil)
	ra, rc := readAll(a), readAll(c)
	waitReady(t, a, c)
	deliver(t, c, "bank-a", ra, "bank-c", "before", 5*time.Second)
	waitFor(t, 5*time.Second, "c on both relays", func() bool {
		return len(r1.srv.Members()) == 2 && len(r2.srv.Members()) == 2
	})

	start := time.Now()
	r1.srv.UpdateAuthority(n.authority("bank-c"))
	r2.srv.UpdateAuthority(n.authority("bank-c"))
	for _, r := range []*testRelay{r1, r2} {
		if contains(r.srv.Members(), "bank-c") {
			t.Fatalf("%s still lists bank-c after UpdateAuthority returned", r.info.ID)
		}
	}
	waitFor(t, time.Second, "bank-c disconnected", func() bool {
		for _, s := range c.Status() {
			if s.State == "up" {
				return false
			}
		}
		return true
	})
	t.Logf("bank-c saw its connections close %v after the update", time.Since(start))
	for i := 0; i < 20; i++ {
		_ = a.WritePacket([]byte("after"), "bank-c")
		_ = c.WritePacket([]byte("after"), "bank-a")
		time.Sleep(10 * time.Millisecond)
	}
	if ra.has("bank-c", "after") || rc.has("bank-a", "after") {
		t.Fatal("traffic flowed to or from a removed member")
	}
}

// Over TCP, a member cut off by the policy is told why (GOAWAY).
func TestCutOffOverTCPSaysWhy(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	r.StopQUIC()
	a := n.member("bank-a", func(c *ClientConfig) { c.QUICTimeout = 200 * time.Millisecond })
	waitReady(t, a)
	r.srv.UpdateAuthority(n.authority("bank-a"))
	waitFor(t, 2*time.Second, "GOAWAY reason at the client", func() bool {
		return strings.Contains(a.Status()[0].LastClose, "no longer admitted by the consortium policy")
	})
}

// A relay dies mid-stream without a goodbye: traffic moves to the other
// relay within 2 s.
// The forwarder hook sees exactly the payload bytes, whatever they look
// like (frames, markers): the relay forwards without parsing payloads.
func TestForwardHookSeesOpaquePayloads(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	var mu sync.Mutex
	var seen [][]byte
	n.startRelay("relay-1", func(c *ServerConfig) {
		c.ForwardHook = func(from, to string, p []byte) {
			mu.Lock()
			seen = append(seen, append([]byte(nil), p...))
			mu.Unlock()
		}
	})
	a, b := n.member("bank-a", nil), n.member("bank-b", nil)
	rb := readAll(b)
	waitReady(t, a, b)
	payloads := [][]byte{
		wire.AppendGoAway(nil, wire.GoAwayNotAllowed, "looks like a frame"),
		wire.AppendPacket(nil, "bank-c", []byte("nested packet for someone else")),
		{0x00},
		bytes.Repeat([]byte{0xff}, 1000),
	}
	for _, p := range payloads {
		for i := 0; !rb.has("bank-a", string(p)); i++ {
			if i > 200 {
				t.Fatalf("payload %x not delivered intact", p[:min(16, len(p))])
			}
			_ = a.WritePacket(p, "bank-b")
			time.Sleep(10 * time.Millisecond)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		ok := false
		for _, p := range payloads {
			ok = ok || bytes.Equal(s, p)
		}
		if !ok {
			t.Fatalf("hook saw bytes that were not a sent payload: %q", s)
		}
	}
	if len(seen) < len(payloads) {
		t.Fatalf("hook saw %d payloads, want at least %d", len(seen), len(payloads))
	}
	if a.Drops()[DropMalformed] != 0 || b.Drops()[DropMalformed] != 0 {
		t.Fatal("payloads were parsed as frames")
	}
}

// A member sending faster than its rate gets no more than its rate through:
// packets in DATAGRAMs are dropped with reason rate_limit, those on its
// stream (where the client puts a burst) wait for the bucket (see
// TestRateLimitBackpressure).
func TestRateLimit(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	// 2000-byte packets: the burst must hold a full-size packet
	// (MinRateBurstBytes), and stays 10 packets.
	r := n.startRelay("relay-1", func(c *ServerConfig) { c.RateBytesPerSec = 20_000; c.RateBurstBytes = 20_000 })
	a, b := n.member("bank-a", nil), n.member("bank-b", nil)
	rb := readAll(b)
	waitReady(t, a, b)
	p := make([]byte, 2000)
	for i := 0; i < 100; i++ { // 200 kB at once: 10 fit in the burst
		_ = a.WritePacket(p, "bank-b")
	}
	waitFor(t, 3*time.Second, "the burst delivered", func() bool { return rb.count("bank-a") >= 5 })
	time.Sleep(1500 * time.Millisecond)
	// At most the burst (10) and 1.5 s at the rate (15) of the 100.
	if got := rb.count("bank-a"); got < 5 || got > 30 {
		t.Errorf("delivered %d of 100 packets under a 10-packet burst at 10 packets/s", got)
	}
	if d := r.srv.Drops()[DropRateLimit]; d > 0 {
		t.Logf("%d dropped for the rate", d)
	}
}

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := newBucket(1000, 1500, t0)
	if !b.allow(1500, t0) || b.allow(1, t0) {
		t.Fatal("burst not enforced")
	}
	if !b.allow(500, t0.Add(500*time.Millisecond)) || b.allow(100, t0.Add(500*time.Millisecond)) {
		t.Fatal("refill not at rate")
	}
	if !b.allow(1500, t0.Add(time.Hour)) || b.allow(1, t0.Add(time.Hour)) {
		t.Fatal("bucket grew beyond burst")
	}
	if !newBucket(0, 0, t0).allow(1<<30, t0) {
		t.Fatal("rate 0 must mean unlimited")
	}
}

func TestConfigValidate(t *testing.T) {
	good := testpki.SelfSigned(t, "x").TLS()
	tests := []struct {
		name string
		cfg  ClientConfig
		want string
	}{
		{"no identity", ClientConfig{Relays: []RelayInfo{{"r", "h:1", "sha256/x"}}}, "certificate"},
		{"no relays", ClientConfig{Identity: good}, "no relays"},
		{"bad pin", ClientConfig{Identity: good, Relays: []RelayInfo{{"r", "h:1", "md5/x"}}}, "pin"},
		{"dup relay", ClientConfig{Identity: good, Relays: []RelayInfo{{"r", "h:1", "sha256/x"}, {"r", "h:2", "sha256/y"}}}, "twice"},
		{"bad addr", ClientConfig{Identity: good, Relays: []RelayInfo{{"r", "nohost", "sha256/x"}}}, "host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want ErrConfig mentioning %q", err, tt.want)
			}
		})
	}
	if _, err := NewServer(ServerConfig{ID: "r"}); !errors.Is(err, ErrConfig) {
		t.Fatalf("server without identity: %v", err)
	}
}

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1 := newMetrics(reg, "memberd_relay", "relay")
	m2 := newMetrics(reg, "memberd_relay", "relay") // shares m1's collectors
	m1.drop(DropACL)
	m2.drop(DropACL)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "memberd_relay_dropped_packets_total" {
			continue
		}
		if len(mf.GetMetric()) != 9 {
			t.Fatalf("%d series, want one per reason", len(mf.GetMetric()))
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == DropACL && m.GetCounter().GetValue() != 2 {
				t.Fatalf("acl drops exported = %v, want 2", m.GetCounter().GetValue())
			}
		}
		return
	}
	t.Fatal("memberd_relay_dropped_packets_total not exported")
}

// SetRelays keeps the connections of relays that stay, dials added ones and
// drops removed ones.
func TestSetRelays(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	r1, r2 := n.startRelay("relay-1", nil), n.startRelay("relay-2", nil)
	a := n.member("bank-a", func(c *ClientConfig) { c.Relays = c.Relays[:1] })
	waitReady(t, a)
	since := a.Status()[0].Since
	if err := a.SetRelays(n.infos); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "bank-a on relay-2", func() bool { return contains(r2.srv.Members(), "bank-a") })
	if s := a.Status()[0]; s.ID != "relay-1" || !s.Since.Equal(since) || s.State != "up" {
		t.Fatalf("relay-1 connection not kept: %+v", s)
	}
	if err := a.SetRelays(n.infos[1:]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "bank-a off relay-1", func() bool { return !contains(r1.srv.Members(), "bank-a") })
	st := a.Status()
	if len(st) != 1 || st[0].ID != "relay-2" || !st[0].Healthy {
		t.Fatalf("status after SetRelays: %s", fmtStatus(st))
	}
	if err := a.SetRelays(nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("SetRelays(nil) = %v, want ErrConfig", err)
	}
}

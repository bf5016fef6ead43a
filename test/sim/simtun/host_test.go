package simtun

import (
	"context"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/test/sim/simnet"
)

// pipeNet is a relay and member hosts on a simnet network.
type pipeNet struct {
	t     *testing.T
	nw    *simnet.Network
	cas   map[string]*testpki.CA
	info  relay.RelayInfo
	srv   *relay.Server
	addrs map[string]netip.Addr
}

func newPipeNet(t *testing.T, f simnet.Faults, members ...string) *pipeNet {
	p := &pipeNet{t: t, nw: simnet.New(simnet.Config{Seed: 1, Faults: f}), cas: map[string]*testpki.CA{}, addrs: map[string]netip.Addr{}}
	cas := map[string][]*x509.Certificate{}
	for i, m := range members {
		p.cas[m] = testpki.NewCA(t, m)
		cas[m] = []*x509.Certificate{p.cas[m].Cert}
		p.addrs[m] = netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)})
	}
	leaf := testpki.SelfSigned(t, "r1")
	p.info = relay.RelayInfo{ID: "r1", Addr: "r1:443", Pin: relay.PinOf(leaf.Cert)}
	auth, err := relay.NewStaticAuthority(relay.StaticPolicy{MemberCAs: cas, AllowAll: true, Relays: []relay.RelayInfo{p.info}})
	if err != nil {
		t.Fatal(err)
	}
	p.srv, err = relay.NewServer(relay.ServerConfig{ID: "r1", Identity: leaf.TLS(), Authority: auth})
	if err != nil {
		t.Fatal(err)
	}
	ln := p.nw.Listen("r1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.srv.ServeTCP(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); p.srv.Close(); <-done })
	return p
}

func (p *pipeNet) host(member string) *Host {
	d := p.nw.Dialer(member)
	h, err := New(member, p.addrs[member], relay.ClientConfig{
		Identity: p.cas[member].Issue(p.t, member).TLS(), Relays: []relay.RelayInfo{p.info}, NoEnvProxy: true,
		DialStream: func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", "r1") },
	}, nil, false)
	if err != nil {
		p.t.Fatal(err)
	}
	return h
}

func connect(t *testing.T, a, b *Host) {
	if err := a.SetPeers([]Peer{{Member: b.Member, Key: b.PublicKey(), Addr: b.Addr}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers([]Peer{{Member: a.Member, Key: a.PublicKey(), Addr: a.Addr}}); err != nil {
		t.Fatal(err)
	}
}

// roundTrip dials b's port 7 from a and echoes 5 bytes.
func roundTrip(t *testing.T, a, b *Host) time.Duration {
	ln, err := b.Stack.Listen(7)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := a.Stack.Dial(ctx, b.Addr, 7)
	if err != nil {
		t.Fatalf("dial %s -> %s: %v (wg %s; relays %+v)", a.Member, b.Member, err, a.WGSummary(), a.Relay.Status())
	}
	defer c.Close()
	c.Write([]byte("hello"))
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo %s -> %s: %q %v", a.Member, b.Member, buf, err)
	}
	return time.Since(start)
}

// TestHostsThroughRelay: two hosts exchange a stream through a real relay
// on virtual time, and again after one restarts with a new WireGuard key.
func TestHostsThroughRelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeNet(t, simnet.Faults{}, "m1", "m2")
		a, b := p.host("m1"), p.host("m2")
		connect(t, a, b)
		t.Logf("first round trip %v (virtual)", roundTrip(t, a, b))
		time.Sleep(3 * time.Minute) // past WireGuard's rekey
		t.Logf("after 3 minutes %v", roundTrip(t, b, a))
		a.Close()
		a = p.host("m1")
		connect(t, a, b)
		t.Logf("after a restart with a new key %v", roundTrip(t, b, a))
		a.Close()
		b.Close()
	})
}

// TestHostsThroughRelayDelayed: round trips keep working for minutes over
// links with delay and stalls.
func TestHostsThroughRelayDelayed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeNet(t, simnet.Faults{MinDelay: 2 * time.Millisecond, MaxDelay: 51 * time.Millisecond, Spike: 0.004, SpikeMax: 2 * time.Second}, "m1", "m2")
		a, b := p.host("m1"), p.host("m2")
		connect(t, a, b)
		for i := range 30 {
			t.Logf("round trip %d: %v", i, roundTrip(t, a, b))
			time.Sleep(10 * time.Second)
		}
		a.Close()
		b.Close()
	})
}

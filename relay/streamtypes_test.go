package relay

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay/wire"
)

// fakeRelay accepts one TLS connection as a relay would, answers the
// member's HELLO with hello and reports the type of every frame it then
// reads: what a relay of that version is sent.
func fakeRelay(t *testing.T, hello wire.Hello) (RelayInfo, <-chan wire.Type) {
	t.Helper()
	cert := testpki.SelfSigned(t, "relay-old").TLS()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		NextProtos: []string{wire.ALPN}, ClientAuth: tls.RequireAnyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	types := make(chan wire.Type, 16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := wire.NewReader(c, 0)
		// Record every type, those this version would skip too.
		r.Skipped = func(t wire.Type, _ int) { types <- t }
		if f, err := r.Next(); err != nil || f.Type != wire.TypeHello {
			return
		}
		if _, err := c.Write(wire.AppendHello(nil, hello)); err != nil {
			return
		}
		for {
			f, err := r.Next()
			if err != nil {
				return
			}
			types <- f.Type
		}
	}()
	return RelayInfo{ID: "relay-old", Addr: ln.Addr().String(), Pin: PinOf(cert.Leaf)}, types
}

// A member on TLS marks the packets it resends (link.sendStream) as
// PACKET_STREAM only to a relay whose HELLO says it forwards them: a
// relay that predates the type skips it (an unknown type), which would
// lose the packet, so such a relay gets a PACKET, as before. Packets
// not sent for the stream are PACKETs to both.
func TestStreamTypesOnlyToRelaysThatSaySo(t *testing.T) {
	member := testpki.NewCA(t, "bank-a-ca").Issue(t, "bank-a-appliance").TLS()
	for _, tc := range []struct {
		name   string
		hello  wire.Hello
		stream wire.Type
	}{
		{"older relay", wire.Hello{Version: wire.Version, Role: wire.RoleRelay}, wire.TypePacket},
		{"relay with stream types", wire.Hello{Version: wire.Version, Role: wire.RoleRelay, Flags: wire.HelloStreamTypes}, wire.TypePacketStream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, types := fakeRelay(t, tc.hello)
			d := &dialer{identity: member, role: wire.RoleMember, tcpTimeout: 5 * time.Second, keepAlive: time.Minute,
				queueLen: 16, drop: func(string) {}}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			l, err := d.dialTCP(ctx, info, nil)
			if err != nil {
				t.Fatal(err)
			}
			ran := make(chan struct{})
			go func() { defer close(ran); l.run(ctx, func(wire.Frame, bool) {}) }()
			defer func() { cancel(); <-ran }()

			l.sendStream(wire.AppendPacket(newFrame(64), "bank-b", []byte("resent")))
			l.sendData(wire.AppendPacket(newFrame(64), "bank-b", []byte("new")))
			var got []wire.Type
			for len(got) < 2 {
				select {
				case ty := <-types:
					if ty == wire.TypePing {
						continue
					}
					got = append(got, ty)
				case <-time.After(5 * time.Second):
					t.Fatalf("the relay received %v, want 2 packets", got)
				}
			}
			// In either order: small frames leave first (urgentFrame)
			// only when both are queued before the writer takes one.
			if !(got[0] == wire.TypePacket && got[1] == tc.stream) && !(got[0] == tc.stream && got[1] == wire.TypePacket) {
				t.Errorf("the relay received %v, want %v and %v", got, wire.TypePacket, tc.stream)
			}
		})
	}
}

// Between relays both sides mark: a relay dialling another over TLS (the
// mesh, UDP blocked) learns from the accepting relay's HELLO, and the
// accepting relay from the dialler's, that FORWARD_STREAM is understood,
// so a resend forwarded one hop stays on the stream either way. A member
// is never sent the marked types.
func TestStreamTypesBetweenRelaysOverTLS(t *testing.T) {
	n := newTestNet(t, []string{"bank-a"}, []string{"relay-1", "relay-2"})
	n.noQUIC = map[string]bool{"relay-2": true}
	r2 := n.startRelay("relay-2", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := &dialer{identity: n.relayID["relay-1"], role: wire.RoleRelay, tcpTimeout: 5 * time.Second,
		keepAlive: time.Minute, queueLen: 16, drop: func(string) {}}
	l, err := d.dialTCP(ctx, n.infos[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close(codeShutdown, "done")
	if !l.streamTypes {
		t.Error("the dialling relay did not learn that relay-2 forwards the stream types")
	}
	ran := make(chan struct{})
	go func() { defer close(ran); l.run(ctx, func(wire.Frame, bool) {}) }()
	defer func() { cancel(); <-ran }()
	member := n.member("bank-a", func(c *ClientConfig) {
		var nd net.Dialer
		c.Relays = n.infos[1:]
		c.DialStream = func(ctx context.Context, addr string) (net.Conn, error) { return nd.DialContext(ctx, "tcp", addr) }
	})
	waitReady(t, member)
	var relayMarks, memberMarks bool
	waitFor(t, 5*time.Second, "relay-2 to register both peers", func() bool {
		r2.srv.mu.RLock()
		defer r2.srv.mu.RUnlock()
		if len(r2.srv.relays) != 1 || len(r2.srv.members["bank-a"].conns) != 1 {
			return false
		}
		for p := range r2.srv.relays {
			relayMarks = p.link.streamTypes
		}
		memberMarks = r2.srv.members["bank-a"].conns[0].link.streamTypes
		return true
	})
	if !relayMarks {
		t.Error("relay-2 does not mark what it forwards to the relay that dialled it")
	}
	if memberMarks {
		t.Error("relay-2 would send a member the stream types")
	}
}

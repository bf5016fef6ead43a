package relay

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/logtest"
	"github.com/memberd/memberd/relay/wire"
)

// pingPong sends a PING on c and reads frames until its PONG: every frame
// sent before it has been handled by the relay (one reader per stream).
func pingPong(t *testing.T, c *tls.Conn) {
	t.Helper()
	if _, err := c.Write(wire.AppendFrame(nil, wire.TypePing, []byte("12345678"))); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rd := wire.NewReader(c, 0)
	for {
		f, err := rd.Next()
		if err != nil {
			t.Fatalf("waiting for PONG: %v", err)
		}
		if f.Type == wire.TypePong && string(f.Body) == "12345678" {
			return
		}
	}
}

// Every frame the relay drops after admission is counted by reason in
// memberd_relay_dropped_packets_total, from members and from relay peers,
// and logged at most once per reason per 10s. Before, FORWARD, HELLO,
// PONG and unknown frame types from an admitted peer vanished without a
// count or a line.
func TestDroppedFramesCountedByReason(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	n.noQUIC = map[string]bool{"relay-1": true}
	logs := &logtest.Buffer{}
	r := n.startRelay("relay-1", func(c *ServerConfig) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		c.Mesh.QUICTimeout = 50 * time.Millisecond
	})
	before := r.srv.Drops()

	// A member, over TLS.
	m := dialSilentMember(t, r.info.Addr, n.cas["bank-a"].Issue(t, "a").TLS())
	memberFrames := [][]byte{
		wire.AppendPacket(nil, "nobody", []byte("x")),                     // acl: not a member
		wire.AppendPacket(nil, "bank-b", []byte("x")),                     // no_route: a member not connected
		wire.AppendForward(nil, "bank-a", "nobody", []byte("x")),          // unexpected_type: members do not FORWARD
		wire.AppendHello(nil, wire.Hello{Version: 1, Role: 1}),            // unexpected_type: a second HELLO
		wire.AppendFrame(nil, wire.TypePong, []byte("12345678")),          // unexpected_type: the relay pings no member
		wire.AppendID(nil, wire.TypeRouteAdd, "bank-a"),                   // unexpected_type
		wire.AppendFrame(nil, wire.TypePacket, nil),                       // malformed
		wire.AppendFrame(nil, wire.TypeGoAway, nil),                       // malformed GOAWAY
		wire.AppendFrame(nil, wire.Type(0x7f), []byte("from the future")), // unknown_type
	}
	for i := range 50 { // many unknown frames: still one log line
		memberFrames = append(memberFrames, wire.AppendFrame(nil, wire.Type(0x40+i%16), nil))
	}
	for _, f := range memberFrames {
		if _, err := m.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	pingPong(t, m)

	// Relay-2 (not running a server here) dials in as a mesh peer.
	rp := dialSilentPeer(t, r.info.Addr, n.relayID["relay-2"], wire.RoleRelay)
	for _, f := range [][]byte{
		wire.AppendForward(nil, "bank-a", "bank-b", []byte("x")), // no_route
		wire.AppendForward(nil, "bank-a", "nobody", []byte("x")), // acl
		wire.AppendPacket(nil, "bank-a", []byte("x")),            // unexpected_type: relays FORWARD
		wire.AppendFrame(nil, wire.TypeForward, []byte{0xff}),    // malformed
		wire.AppendFrame(nil, wire.Type(0xee), nil),              // unknown_type
	} {
		if _, err := rp.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	pingPong(t, rp)

	got := r.srv.Drops()
	want := map[string]uint64{DropNoRoute: 2, DropACL: 2, DropUnexpected: 5, DropMalformed: 3, DropUnknownType: 52}
	for reason, w := range want {
		if d := got[reason] - before[reason]; d != w {
			t.Errorf("dropped{reason=%s} = %d, want %d (all: %v)", reason, d, w, got)
		}
	}
	for reason := range want {
		if c := strings.Count(logs.String(), "reason="+reason+" more_since_last_line"); c != 1 {
			t.Errorf("%d log lines for reason %s, want 1 (rate-limited)", c, reason)
		}
	}
	if !strings.Contains(logs.String(), "type=type(0x7f)") {
		t.Errorf("the unknown_type line does not name the type:\n%s", logs.String())
	}
}

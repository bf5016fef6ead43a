package relay

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/relay/wire"
)

// dialSilentMember connects to addr over TLS as a member, exchanges
// HELLOs and returns the connection, which then sends nothing.
func dialSilentMember(t *testing.T, addr string, id tls.Certificate) *tls.Conn {
	t.Helper()
	return dialSilentPeer(t, addr, id, wire.RoleMember)
}

// dialSilentPeer is dialSilentMember for a member or relay role.
func dialSilentPeer(t *testing.T, addr string, id tls.Certificate, role uint8) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN},
		Certificates: []tls.Certificate{id}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(wire.AppendHello(nil, wire.Hello{Version: wire.Version, Role: role})); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := wire.NewReader(c, 0).Next()
	if err != nil || f.Type != wire.TypeHello {
		t.Fatalf("HELLO answer: %v %v", f.Type, err)
	}
	return c
}

// A member that passes the TLS handshake and the HELLO exchange and then
// goes silent (no keepalive, no data) is closed after IdleTimeout, with a
// GOAWAY that says why, and counted; a member on TLS that only pings
// (keepalives, no data) is never cut. Before, the silent connection was
// held for ever.
func TestSilentTCPMemberClosed(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	n.noQUIC = map[string]bool{"relay-1": true}
	const idle = time.Second
	r := n.startRelay("relay-1", func(c *ServerConfig) { c.IdleTimeout = idle })

	idleB := n.member("bank-b", nil) // keepalives only, over TLS (no UDP)
	waitReady(t, idleB)

	start := time.Now()
	c := dialSilentMember(t, r.info.Addr, n.cas["bank-a"].Issue(t, "a").TLS())
	waitFor(t, 5*time.Second, "bank-a registered", func() bool { return contains(r.srv.Members(), "bank-a") })
	_ = c.SetReadDeadline(time.Now().Add(20 * idle))
	rd := wire.NewReader(c, 0)
	var goAway string
	for {
		f, err := rd.Next()
		if err != nil {
			if strings.Contains(err.Error(), "timeout") {
				t.Fatalf("the silent connection is still open after %v: %v", time.Since(start), err)
			}
			break
		}
		if f.Type == wire.TypeGoAway {
			goAway = string(f.Body)
		}
	}
	took := time.Since(start)
	if took < idle {
		t.Fatalf("closed after %v, before the idle timeout %v", took, idle)
	}
	if !strings.Contains(goAway, "idle") {
		t.Errorf("GOAWAY body %q does not say idle", goAway)
	}
	if got := r.srv.ClosedConns()[CloseIdle]; got != 1 {
		t.Errorf("closed_connections_total{reason=idle} = %d, want 1 (%v)", got, r.srv.ClosedConns())
	}
	waitFor(t, 5*time.Second, "bank-a unregistered", func() bool { return !contains(r.srv.Members(), "bank-a") })
	t.Logf("silent member closed %v after connecting (idle timeout %v)", took.Round(time.Millisecond), idle)

	// bank-b, idle but pinging, stayed through several idle timeouts.
	time.Sleep(2 * idle)
	if got := r.srv.ClosedConns()[CloseIdle]; got != 1 {
		t.Errorf("a pinging member was cut as idle: closed_connections_total{reason=idle} = %d", got)
	}
	if !contains(r.srv.Members(), "bank-b") {
		t.Error("bank-b, which pings, is no longer connected")
	}
}

// The idle timer re-arms for the last frame: a link that receives a frame
// now and then is never closed, one that stops is.
func TestCloseIfIdle(t *testing.T) {
	l := newLink(PathTCP, nil, nil, tls.ConnectionState{}, func(quic.ApplicationErrorCode, string) {}, 4, func(string) {})
	fired := make(chan time.Duration, 1)
	stop := l.closeIfIdle(200*time.Millisecond, func(s time.Duration) { fired <- s })
	defer stop()
	for range 6 {
		time.Sleep(50 * time.Millisecond)
		l.lastRecv.Store(time.Now().UnixNano())
	}
	select {
	case s := <-fired:
		t.Fatalf("closed after %v of silence while frames kept arriving", s)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case s := <-fired:
		if s < 200*time.Millisecond {
			t.Fatalf("closed after %v of silence, before 200ms", s)
		}
	case <-ctx.Done():
		t.Fatal("a silent link was not closed")
	}
	select { // closed right after onIdle returns
	case <-l.done:
	case <-ctx.Done():
		t.Fatal("link not closed")
	}
}

package raftlog

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/internal/logtest"
	"github.com/memberd/memberd/internal/netstacktest"
)

// TestInboundNetstackConnResetByPeer reproduces issue #9's follower crash
// on a real netstack connection, what raft runs on through the tunnel: a
// peer sends a frame the listener refuses, with more bytes behind it, so
// that closing the connection resets it, after which a netstack
// connection's RemoteAddr is nil. The accept loop used to log
// c.RemoteAddr().String() then, and panicked. It must log, count nothing
// as a panic, and go on accepting.
func TestInboundNetstackConnResetByPeer(t *testing.T) {
	p := netstacktest.NewPair(t)
	ln, err := p.B.ListenTCPAddrPort(netip.AddrPortFrom(p.AddrB, 7051))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func() io.ReadWriteCloser {
		c, err := p.A.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(p.AddrB, 7051))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Frame version 9, then more bytes than the listener reads before it
	// gives up (its 64 KiB buffer), all queued before it starts accepting,
	// so that its close finds unread bytes and resets.
	bad := dial()
	defer bad.Close()
	if _, err := bad.Write(append([]byte{9, frameHello, 0, 0, 0, 0}, make([]byte, 256<<10)...)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the bytes cross the pipe

	tr, _ := startRefusing(t, ctx, ln, "10.250.0.1")

	// The listener still answers: a hello for another cluster is rejected
	// with a reason.
	c := dial()
	defer c.Close()
	h := hello{From: 2, To: 1, Cluster: "other"}
	if _, err := c.Write(appendFrame(nil, frameHello, h.marshal())); err != nil {
		t.Fatal(err)
	}
	fr := frameReader{r: c, max: 4096}
	typ, reason, err := fr.next()
	if err != nil || typ != frameReject || !strings.Contains(string(reason), "not this node's cluster") {
		t.Fatalf("after the reset connection: frame %d %q, %v; want a reject", typ, reason, err)
	}
	if n := tr.stats().Panics; n != 0 {
		t.Errorf("panics = %d, want 0", n)
	}
}

// TestSurviveClosesOnlyThatConnection: a panic in a goroutine serving one
// connection is logged with its stack, counted, and closes that
// connection; the goroutine returns normally.
func TestSurviveClosesOnlyThatConnection(t *testing.T) {
	var logs logtest.Buffer
	tr := &transport{log: slog.New(slog.NewTextHandler(&logs, nil))}
	closed := false
	func() {
		defer tr.survive("from 10.0.0.9:1234", func() { closed = true })
		var m map[string]int
		m["x"]++ // a nil map write: a real runtime panic
	}()
	if !closed || tr.stats().Panics != 1 {
		t.Fatalf("closed %v, panics %d; want true, 1", closed, tr.stats().Panics)
	}
	for _, want := range []string{"assignment to entry in nil map", "from 10.0.0.9:1234", "netstack_test.go"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

func TestAddrString(t *testing.T) {
	var typedNil *badAddr
	for _, tc := range []struct {
		name string
		a    net.Addr
		want string
	}{
		{"nil", nil, "unknown"},
		{"typed nil whose String dereferences", typedNil, "<nil>"},
		{"tcp", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 7051}, "10.0.0.1:7051"},
	} {
		if got := addrString(tc.a); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

type badAddr struct{ s string }

func (a *badAddr) Network() string { return "tcp" }
func (a *badAddr) String() string  { return a.s }

// startRefusing starts a transport (node 1 of cluster ch1) on ln and waits
// until it logged closing an inbound connection from a peer at from
// (after refusing what it sent); it stops with the test.
func startRefusing(t *testing.T, ctx context.Context, ln net.Listener, from string) (*transport, *logtest.Buffer) {
	t.Helper()
	logs := &logtest.Buffer{}
	tr := &transport{id: 1, cluster: "ch1", ln: ln, queueLen: 8, maxFrame: 1 << 20,
		dialTO: 5 * time.Second, writeTO: 5 * time.Second,
		log:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		report: &fakeReporter{snaps: map[uint64]raft.SnapshotStatus{}}}
	gctx, stop := context.WithCancel(ctx)
	var g errgroup.Group
	tr.start(gctx, &g, nil)
	t.Cleanup(func() {
		stop()
		if err := g.Wait(); err != nil {
			t.Errorf("transport: %v", err)
		}
	})
	for !strings.Contains(logs.String(), "raft inbound connection closed") {
		if ctx.Err() != nil {
			t.Fatalf("the refused connection was never logged; log:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "remote="+from+":") {
		t.Errorf("the log does not name the peer's address %s:\n%s", from, logs.String())
	}
	return tr, logs
}

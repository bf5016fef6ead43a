package appliance

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// helloFrame is the raft hello a node dials with (node/raftlog frame.go):
// version 1, type 1, length, from(8) to(8) clusterLen(1) cluster.
func helloFrame(cluster string) []byte {
	payload := binary.BigEndian.AppendUint64(nil, 2)
	payload = binary.BigEndian.AppendUint64(payload, 1)
	payload = append(append(payload, byte(len(cluster))), cluster...)
	b := binary.BigEndian.AppendUint32([]byte{1, 1}, uint32(len(payload)))
	return append(b, payload...)
}

// TestPortListenerViews: a removed node's view releases the port for the
// next node without unbinding it; with no view open a connection is closed
// at once; Close ends every view's Accept.
func TestPortListenerViews(t *testing.T) {
	p, addr := loopbackPortListener(t)
	v1, err := p.view("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.view("demo"); !errors.Is(err, errViewOpen) {
		t.Fatalf("second view: %v, want errViewOpen", err)
	}
	roundTrip(t, addr, "demo", v1)
	v1.Close()
	if _, err := v1.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	// No view: the connection is accepted and closed at once.
	expectRejected(t, addr, "demo")
	v2, err := p.view("demo")
	if err != nil {
		t.Fatalf("view after the first closed: %v", err)
	}
	roundTrip(t, addr, "demo", v2)
	errc := make(chan error, 1)
	go func() { _, err := v2.Accept(); errc <- err }()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Accept returned no error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
	if _, err := p.view("demo"); err == nil {
		t.Fatal("view after Close succeeded")
	}
}

// TestPortListenerRoutesByChannel: one port serves two channels' nodes,
// each connection reaching the node of the channel its hello names, hello
// included; a hello for a channel without a node, or no hello at all, is
// closed; Close ends a connection still waiting for its hello.
func TestPortListenerRoutesByChannel(t *testing.T) {
	p, addr := loopbackPortListener(t)
	alpha, err := p.view("alpha")
	if err != nil {
		t.Fatal(err)
	}
	beta, err := p.view("beta")
	if err != nil {
		t.Fatalf("a second channel's view on the same port: %v", err)
	}
	for range 8 { // a router that ignored the channel would miss one
		roundTrip(t, addr, "beta", beta)
		roundTrip(t, addr, "alpha", alpha)
	}
	expectRejected(t, addr, "gamma")
	expectRefused(t, addr, []byte("GET / HTTP/1.1\r\n\r\n"))
	// A connection that never says hello does not outlive Close.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	time.Sleep(50 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for a connection without a hello")
	}
}

// loopbackPortListener is a portListener on a loopback port, closed when
// the test ends.
func loopbackPortListener(t *testing.T) (*portListener, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := newPortListener(ln, nil)
	t.Cleanup(func() { p.Close() })
	return p, ln.Addr().String()
}

// roundTrip dials addr, says hello for channel, and checks that v accepts
// the connection and reads the hello and what follows.
func roundTrip(t *testing.T, addr, channel string, v net.Listener) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := helloFrame(channel)
	if _, err := c.Write(append(h, 'x')); err != nil {
		t.Fatal(err)
	}
	type accepted struct {
		c   net.Conn
		err error
	}
	ac := make(chan accepted, 1)
	go func() { c, err := v.Accept(); ac <- accepted{c, err} }()
	var got net.Conn
	select {
	case r := <-ac:
		if r.err != nil {
			t.Fatal(r.err)
		}
		got = r.c
	case <-time.After(5 * time.Second):
		t.Fatalf("channel %s: the connection did not reach the channel's view", channel)
	}
	defer got.Close()
	b := make([]byte, len(h)+1)
	if _, err := io.ReadFull(got, b); err != nil || string(b[:len(h)]) != string(h) || b[len(h)] != 'x' {
		t.Fatalf("channel %s: read %q %v", channel, b, err)
	}
	if _, err := got.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, b[:1]); err != nil || b[0] != 'y' {
		t.Fatalf("channel %s: answer %q %v", channel, b[:1], err)
	}
}

// expectRefused dials addr, writes first and expects the connection
// closed; it returns what was read before (a reject frame, or nothing).
func expectRefused(t *testing.T, addr string, first []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(first)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if isTimeoutErr(err) {
		t.Fatalf("connection starting %q: read %q %v, want it closed", first, got, err)
	}
	return got
}

// expectRejected is expectRefused for a hello naming channel, answered by
// a raft reject frame whose reason names it.
func expectRejected(t *testing.T, addr, channel string) {
	t.Helper()
	got := expectRefused(t, addr, helloFrame(channel))
	if len(got) < 6 || got[0] != 1 || got[1] != 2 || int(binary.BigEndian.Uint32(got[2:6])) != len(got)-6 ||
		!strings.Contains(string(got[6:]), fmt.Sprintf("%q", channel)) {
		t.Fatalf("hello for channel %s answered %q, want a reject frame naming it", channel, got)
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPortListenerPendingCap: past maxPendingHellos connections awaiting
// their hello, a new one is closed at once (not after helloTimeout).
func TestPortListenerPendingCap(t *testing.T) {
	p, addr := loopbackPortListener(t)
	for range maxPendingHellos {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.pending)
		p.mu.Unlock()
		if n == maxPendingHellos {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections pending, want %d", n, maxPendingHellos)
		}
		time.Sleep(10 * time.Millisecond)
	}
	expectRefused(t, addr, nil)
	if p.overflow.Load() == 0 {
		t.Error("the closed connection is not counted")
	}
}

// panicConn panics where route sets its read deadline.
type panicConn struct{ net.Conn }

func (panicConn) SetReadDeadline(time.Time) error { panic("boom") }

// TestPortListenerRouteSurvivesPanic: a panic routing one connection
// closes it and is counted; the process goes on.
func TestPortListenerRouteSurvivesPanic(t *testing.T) {
	p, _ := loopbackPortListener(t)
	a, b := net.Pipe()
	defer b.Close()
	c := panicConn{a}
	p.mu.Lock()
	p.pending[c] = true
	p.mu.Unlock()
	p.routing.Add(1)
	p.route(c)
	if p.panics.Load() != 1 {
		t.Errorf("panics = %d, want 1", p.panics.Load())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending[c] {
		t.Error("the connection stays pending")
	}
	if _, err := b.Write([]byte("x")); err == nil {
		t.Error("the connection is not closed")
	}
}

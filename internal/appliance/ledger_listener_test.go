package appliance

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestPortListenerViews: a removed node's view releases the port for the
// next node without unbinding it; with no view open a connection is closed
// at once; Close ends every view's Accept.
func TestPortListenerViews(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := newPortListener(ln)
	defer p.Close()
	addr := ln.Addr().String()
	roundTrip := func(v net.Listener) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := v.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer got.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(got, b); err != nil || b[0] != 'x' {
			t.Fatalf("read %q %v", b, err)
		}
	}
	v1, err := p.view()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.view(); !errors.Is(err, errViewOpen) {
		t.Fatalf("second view: %v, want errViewOpen", err)
	}
	roundTrip(v1)
	v1.Close()
	if _, err := v1.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	// No view: the connection is accepted and closed at once.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read on a port without a node: %v, want EOF", err)
	}
	c.Close()
	v2, err := p.view()
	if err != nil {
		t.Fatalf("view after the first closed: %v", err)
	}
	roundTrip(v2)
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
	if _, err := p.view(); err == nil {
		t.Fatal("view after Close succeeded")
	}
}

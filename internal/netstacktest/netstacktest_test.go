package netstacktest

import (
	"io"
	"net/netip"
	"testing"
	"time"
)

// TestResetConn: the connection ResetConn returns has lost its remote address.
func TestResetConn(t *testing.T) {
	p := NewPair(t)
	c := p.ResetConn(t, 7000)
	if c.RemoteAddr() != nil {
		t.Fatalf("RemoteAddr %v, want nil after the peer's reset", c.RemoteAddr())
	}
}

// TestPairCarriesTCP: a byte stream goes from A to B and back.
func TestPairCarriesTCP(t *testing.T) {
	p := NewPair(t)
	ln, err := p.B.ListenTCPAddrPort(netip.AddrPortFrom(p.AddrB, 7001))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := p.A.DialTCPAddrPort(netip.AddrPortFrom(p.AddrB, 7001))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo %q, %v", b, err)
	}
}

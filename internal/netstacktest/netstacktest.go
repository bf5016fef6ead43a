// Package netstacktest joins two wireguard-go netstacks (gVisor TCP/IP in
// user space, what the tunnel's connections run on) by an in-memory packet
// pipe, for tests that need real netstack connections without WireGuard
// and relays.
package netstacktest

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// Pair is two netstacks, A at 10.250.0.1 and B at 10.250.0.2, whose IP
// packets go to each other. Closed at the test's cleanup.
type Pair struct {
	A, B         *netstack.Net
	AddrA, AddrB netip.Addr
}

// NewPair makes a Pair.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	p := &Pair{AddrA: netip.MustParseAddr("10.250.0.1"), AddrB: netip.MustParseAddr("10.250.0.2")}
	ta, na, err := netstack.CreateNetTUN([]netip.Addr{p.AddrA}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	tb, nb, err := netstack.CreateNetTUN([]netip.Addr{p.AddrB}, nil, 1280)
	if err != nil {
		ta.Close()
		t.Fatal(err)
	}
	p.A, p.B = na, nb
	done := make(chan struct{}, 2)
	go pipe(ta, tb, done)
	go pipe(tb, ta, done)
	t.Cleanup(func() {
		ta.Close() // ends both pipes: Read fails on a closed device
		tb.Close()
		<-done
		<-done
	})
	return p
}

// pipe copies packets from src to dst until src is closed.
func pipe(src, dst tun.Device, done chan<- struct{}) {
	defer func() { done <- struct{}{} }()
	bufs := [][]byte{make([]byte, 2048)}
	sizes := []int{0}
	for {
		n, err := src.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		if n == 1 {
			// A write to a closed device only fails; the next Read ends the pipe.
			_, _ = dst.Write([][]byte{bufs[0][:sizes[0]]}, 0)
		}
	}
}

// ResetConn returns the accepting end of a TCP connection from A to B on
// port whose dialling end reset it (it closed with unread data, which
// sends RST). Its RemoteAddr is nil, as for every netstack
// connection whose peer went away abruptly.
func (p *Pair) ResetConn(t testing.TB, port uint16) net.Conn {
	t.Helper()
	ln, err := p.B.ListenTCPAddrPort(netip.AddrPortFrom(p.AddrB, port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := p.A.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(p.AddrB, port))
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	// B's bytes reach A unread; A's close then resets (RFC 2525 2.17),
	// whether they arrive before or after it.
	if _, err := sc.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	dc.Close()
	for deadline := time.Now().Add(10 * time.Second); sc.RemoteAddr() != nil; {
		if time.Now().After(deadline) {
			t.Fatal("the accepting end still has a remote address 10s after its peer reset it")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return sc
}

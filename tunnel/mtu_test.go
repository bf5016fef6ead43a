package tunnel_test

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// pathTransport reports a path size the test sets, as the relay client
// does when its path changes, and records the largest packet written.
type pathTransport struct {
	tunnel.PacketTransport
	max, biggest atomic.Int64
}

func (p *pathTransport) MaxPacketSize() int { return int(p.max.Load()) }

func (p *pathTransport) WritePacket(pkt []byte, member string) error {
	for n := int64(len(pkt)); n > p.biggest.Load(); {
		if p.biggest.CompareAndSwap(p.biggest.Load(), n) {
			break
		}
	}
	return p.PacketTransport.WritePacket(pkt, member)
}

// TestMTUFollowsPath: a member whose transport starts on a small path
// (as with no relay reachable) takes the larger MTU once the path grows;
// connections opened after that send the larger packets, the one opened
// before keeps its segment size.
func TestMTUFollowsPath(t *testing.T) {
	var pt *pathTransport
	c := newCluster(t, 2, clusterOpts{config: func(cfg *tunnel.Config) {
		if cfg.Member == memberName(0) {
			pt = &pathTransport{PacketTransport: cfg.Transport}
			pt.max.Store(1100)
			cfg.Transport = pt
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a, b := c.devs[memberName(0)], c.devs[memberName(1)]
	if got, want := a.MTU(), 1100-tunnel.WireGuardOverhead; got != want {
		t.Fatalf("MTU %d at start, want %d", got, want)
	}
	send := func(conn, peer net.Conn) int64 {
		t.Helper()
		pt.biggest.Store(0)
		done := make(chan error, 1)
		go func() { _, err := io.CopyN(io.Discard, peer, 256<<10); done <- err }()
		if _, err := conn.Write(make([]byte, 256<<10)); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return pt.biggest.Load()
	}
	oldA, oldB := connect(t, ctx, a, b, memberName(1), 7001)
	if n := send(oldA, oldB); n > 1100 {
		t.Fatalf("%d-byte packet on a 1100-byte path", n)
	}

	pt.max.Store(1240)
	want := 1240 - tunnel.WireGuardOverhead
	deadline := time.Now().Add(5 * time.Second)
	for a.MTU() != want {
		if time.Now().After(deadline) {
			t.Fatalf("MTU %d 5s after the path grew, want %d", a.MTU(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	newA, newB := connect(t, ctx, a, b, memberName(1), 7002)
	if n := send(newA, newB); n <= 1100 || n > 1240 {
		t.Fatalf("a new connection sent at most %d-byte packets on a 1240-byte path", n)
	} else {
		t.Logf("new connection: %d-byte packets", n)
	}
	if n := send(oldA, oldB); n > 1100 {
		t.Fatalf("the connection opened before sent %d-byte packets", n)
	}
}

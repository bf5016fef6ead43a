package relay

import (
	"bytes"
	"testing"
	"time"
)

// TestSmallPacketsReadFirst: consensus first (issue #15) on the receiving
// member. Full-size packets are waiting for the tunnel to read them (its
// WireGuard busy with a bulk transfer) when a small one (a raft heartbeat)
// arrives through the relay: the next read returns the small one, then the
// full-size ones in their order. Before, it waited behind all of them (as
// it does with MEMBERD_DIAG_NO_PRIORITY=1, which fails this test).
func TestSmallPacketsReadFirst(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	n.startRelay("relay-1", func(c *ServerConfig) { c.RateBytesPerSec = -1 })
	a, b := n.member("bank-a", nil), n.member("bank-b", nil)
	waitReady(t, a, b)
	const big = 100
	for i := range big {
		if err := a.WritePacket(bytes.Repeat([]byte{byte(i)}, 1200), "bank-b"); err != nil {
			t.Fatal(err)
		}
		if i%16 == 15 { // let the link drain: its queue drops when full
			waitQueued(t, b, i+1)
		}
	}
	waitQueued(t, b, big)
	if err := a.WritePacket([]byte("heartbeat"), "bank-b"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(b.recv)+len(b.urgentRecv) <= big {
		if time.Now().After(deadline) {
			t.Fatal("the small packet did not arrive")
		}
		time.Sleep(5 * time.Millisecond)
	}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	sizes, from := make([]int, len(bufs)), make([]string, len(bufs))
	k, err := b.ReadPackets(bufs, sizes, from)
	if err != nil {
		t.Fatal(err)
	}
	if k < 2 || string(bufs[0][:sizes[0]]) != "heartbeat" || from[0] != "bank-a" {
		t.Fatalf("first of %d packets read: %d bytes from %q, want the small one first", k, sizes[0], from[0])
	}
	for i := 1; i < k; i++ {
		if sizes[i] != 1200 || bufs[i][0] != byte(i-1) {
			t.Fatalf("packet %d: %d bytes, first byte %d; want the full-size ones in order", i, sizes[i], bufs[i][0])
		}
	}
}

// waitQueued waits until c holds n full-size packets unread.
func waitQueued(t *testing.T, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(c.recv) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d packets waiting, want %d (drops %v)", len(c.recv), n, c.Drops())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package tunnel_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// TestMemberRestartClosesItsConnections: when a member's tunnel endpoint
// restarts (a new process: a new WireGuard key it did not announce as its
// next one, and no longer holding ours), the connections to its old
// endpoint are dead (its netstack is gone; TCP would wait minutes of
// retransmission timeouts), so the other member closes them at once, and
// a new Dial reaches the restarted member.
func TestMemberRestartClosesItsConnections(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a := c.devs["bank-a"]
	ca, _ := connect(t, ctx, a, c.devs["bank-b"], "bank-b", 7050)
	oldKey := c.devs["bank-b"].PublicKey()
	rekeyed := make(chan string, 4)
	defer a.OnRekeyed(func(m string) { rekeyed <- m })()

	b := c.crash("bank-b")
	tunneltest.Start(t, b)

	read := make(chan error, 1)
	go func() {
		_, err := ca.Read(make([]byte, 1))
		read <- err
	}()
	select {
	case err := <-read:
		// No FIN could come (the transport was cut first): the read
		// ended because bank-a closed the connection.
		if err == nil {
			t.Fatal("read a byte from a dead endpoint")
		}
		if _, err := ca.Write([]byte("x")); err == nil {
			t.Fatal("connection to the old endpoint still writable")
		}
	case <-ctx.Done():
		t.Fatal("connection to the restarted member's old endpoint still open")
	}
	for _, p := range a.Peers() {
		if p.Member == "bank-b" && p.PublicKey == oldKey {
			t.Fatalf("bank-b's old key %s still active after its restart", oldKey)
		}
	}
	ca2, cb2 := connect(t, ctx, a, b, "bank-b", 7051)
	if err := transfer(ctx, ca2, cb2, 64<<10, 7); err != nil {
		t.Fatalf("transfer to the restarted member: %v", err)
	}
	select {
	case m := <-rekeyed:
		if m != "bank-b" {
			t.Fatalf("OnRekeyed(%s), want bank-b", m)
		}
	case <-ctx.Done():
		t.Fatal("the restart was not reported to OnRekeyed")
	}
}

// TestMemberRestartHoldingOurKeyIsRekeyed: a member restarts, and its first
// announcements are lost until it has learned our key from our periodic
// announcement. Its new key then arrives with "holds yours" set, as after a
// rotation whose next-key announcement was lost, so the tunnel cannot tell
// it from one and keeps its connections; OnRekeyed still reports it at
// once, for users that close theirs (the appliance's ledger).
func TestMemberRestartHoldingOurKeyIsRekeyed(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{config: func(cfg *tunnel.Config) { cfg.AnnounceEvery = 300 * time.Millisecond }})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a := c.devs["bank-a"]
	rekeyed := make(chan string, 4)
	defer a.OnRekeyed(func(m string) { rekeyed <- m })()
	stop := a.OnRekeyed(func(string) { t.Error("a stopped OnRekeyed function was called") })
	stop()
	stop()

	var b *tunnel.Device
	var learned atomic.Bool // b holds a's key: let b's packets through
	c.net.SetFilter(func(from, to string, _ []byte) bool {
		if from != "bank-b" || learned.Load() {
			return true
		}
		if b != nil && len(activePeers(b)) > 0 {
			learned.Store(true)
			return true
		}
		return false
	})
	defer c.net.SetFilter(nil)
	b = c.crash("bank-b") // before Run: the filter reads it once b sends
	tunneltest.Start(t, b)

	select {
	case m := <-rekeyed:
		if m != "bank-b" {
			t.Fatalf("OnRekeyed(%s), want bank-b", m)
		}
		if !learned.Load() {
			t.Fatal("bank-b's announcement reached bank-a before bank-b held bank-a's key: the test did not make the case it is about")
		}
	case <-ctx.Done():
		t.Fatal("bank-b's new key was not reported to OnRekeyed")
	}
}

// crash stops member as a crash would and returns its next process: a new
// Device (not running yet) with the same configuration and a new key.
// Its packets stop before its Close could say goodbye (a FIN would end
// the connections by itself).
func (c *cluster) crash(member string) *tunnel.Device {
	c.t.Helper()
	cfg := c.cfgs[member]
	cfg.Transport.Close()
	c.devs[member].Close()
	cfg.Transport = c.net.Transport(member)
	d, err := tunnel.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { d.Close() })
	return d
}

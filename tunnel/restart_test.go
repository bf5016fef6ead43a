package tunnel_test

import (
	"context"
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

	// A crash, not a shutdown: bank-b's packets stop before its Close
	// could say goodbye (a FIN would end the connection by itself).
	cfg := c.cfgs["bank-b"]
	cfg.Transport.Close()
	c.devs["bank-b"].Close()
	cfg.Transport = c.net.Transport("bank-b")
	b, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
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
}

package raftlog

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// TestInboundTunnelConnResetByPeer is issue #9's follower crash as
// deployed: raft listens on a tunnel.Listener (WireGuard over an in-memory
// packet network, gVisor netstack TCP); member a dials it through its own
// tunnel and sends a bad frame with 256 KiB behind it, queued before the
// transport accepts, so that closing the connection resets it. The old
// accept loop panicked logging its nil RemoteAddr (5 runs of 5, at
// transport.go:441); tunnel.Conn now also keeps its addresses, so this
// test guards the deployed path, and TestInboundNetstackConnResetByPeer
// the transport on a bare netstack connection.
func TestInboundTunnelConnResetByPeer(t *testing.T) {
	_, devs := newTunnels(t, 98, "bank-a", "bank-b")
	ln, err := devs["bank-b"].Listen(7052)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bad, err := devs["bank-a"].Dial(ctx, "bank-b", 7052)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Write(append([]byte{9, frameHello, 0, 0, 0, 0}, make([]byte, 256<<10)...)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // let the bytes cross the tunnel

	tr, _ := startRefusing(t, ctx, ln, "10.98.0.1")
	if n := tr.stats().Panics; n != 0 {
		t.Errorf("panics = %d, want 0", n)
	}
}

// newTunnels starts one tunnel device per member on an in-memory packet
// network, member i at overlay address 10.net.0.i+1; closed with the test.
func newTunnels(t *testing.T, net byte, members ...string) (*tunneltest.Network, map[string]*tunnel.Device) {
	nw := tunneltest.NewNetwork(tunneltest.Options{})
	var specs []tunneltest.MemberSpec
	for i, id := range members {
		specs = append(specs, tunneltest.MemberSpec{ID: id, Addr: netip.AddrFrom4([4]byte{10, net, 0, byte(i + 1)}), CA: testpki.NewCA(t, id)})
	}
	auth := tunneltest.NewAuthority(specs, nil)
	devs := map[string]*tunnel.Device{}
	for _, s := range specs {
		signer, chain := s.CA.Issue(t, "appliance").Identity()
		d, err := tunnel.New(tunnel.Config{Member: s.ID, Signer: signer, Chain: chain, Transport: nw.Transport(s.ID), Authority: auth})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		tunneltest.Start(t, d)
		devs[s.ID] = d
	}
	return nw, devs
}

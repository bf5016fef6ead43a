package appliance

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// TestLedgerClosesConnectionsToRestartedMember: a member's tunnel endpoint
// restarts, and its announcements are lost until it has learned our key,
// so its new key comes as a rotation whose announcement was lost would:
// the tunnel keeps its connection to the dead endpoint. The ledger's
// connection dialed through tunnelDialer is still closed at once, on the
// tunnel's OnRekeyed event (nothing polls), and a new one reaches the
// restarted member.
func TestLedgerClosesConnectionsToRestartedMember(t *testing.T) {
	nw := tunneltest.NewNetwork(tunneltest.Options{})
	var specs []tunneltest.MemberSpec
	for i, id := range []string{"bank-a", "bank-b"} {
		specs = append(specs, tunneltest.MemberSpec{ID: id, Addr: netip.AddrFrom4([4]byte{10, 98, 0, byte(i + 1)}), CA: testpki.NewCA(t, id)})
	}
	auth := tunneltest.NewAuthority(specs, nil)
	cfgs := map[string]tunnel.Config{}
	start := func(s tunneltest.MemberSpec) *tunnel.Device {
		signer, chain := s.CA.Issue(t, "appliance").Identity()
		cfg := tunnel.Config{Member: s.ID, Signer: signer, Chain: chain, Transport: nw.Transport(s.ID),
			Authority: auth, AnnounceEvery: 300 * time.Millisecond}
		cfgs[s.ID] = cfg
		d, err := tunnel.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		tunneltest.Start(t, d)
		return d
	}
	a, b := start(specs[0]), start(specs[1])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	w := &peerWatch{log: slog.New(slog.DiscardHandler)}
	defer a.OnRekeyed(w.rekeyed)()
	dialer := tunnelDialer{dev: a, watch: w}
	const port = 7060
	ln, err := b.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	c, err := dialer.DialContext(ctx, "tcp", "bank-b:7060")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}

	// bank-b crashes (its packets stop before a FIN) and comes back with a
	// new key; what it sends is dropped until it holds bank-a's key.
	var nb atomic.Pointer[tunnel.Device]
	var learned atomic.Bool
	nw.SetFilter(func(from, _ string, _ []byte) bool {
		if from != "bank-b" || learned.Load() {
			return true
		}
		if d := nb.Load(); d != nil && len(d.Peers()) > 0 {
			learned.Store(true)
			return true
		}
		return false
	})
	defer nw.SetFilter(nil)
	cfg := cfgs["bank-b"]
	cfg.Transport.Close()
	b.Close()
	cfg.Transport = nw.Transport("bank-b")
	b2, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b2.Close() })
	nb.Store(b2)
	tunneltest.Start(t, b2)

	// The ledger closes its connection itself (a read could also end by a
	// reset from the new endpoint): it forgets it as it closes it.
	for w.tracked("bank-b") > 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the ledger's connection to the restarted member's old endpoint is still open")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if !learned.Load() {
		t.Fatal("bank-b's announcement reached bank-a before bank-b held bank-a's key: the test did not make the case it is about")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read a byte from a dead endpoint")
	}
	ln2, err := b2.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		if c, err := ln2.Accept(); err == nil {
			acc <- c
		}
	}()
	c2, err := dialer.DialContext(ctx, "tcp", "bank-b:7060")
	if err != nil {
		t.Fatalf("redial the restarted member: %v", err)
	}
	defer c2.Close()
	select {
	case s := <-acc:
		s.Close()
	case <-ctx.Done():
		t.Fatal("the restarted member did not accept the redial")
	}
}

// tracked is how many connections to member w tracks.
func (w *peerWatch) tracked(member string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.conns[member])
}

package tunnel_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/memberd/memberd/internal/lifecycletest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// lifecycleConfig is member bank-a's config with a forward on a loopback
// port that was free a moment ago and an overlay service, over a fresh
// in-memory network.
func lifecycleConfig(t *testing.T) (tunnel.Config, string) {
	t.Helper()
	specs := []tunneltest.MemberSpec{
		{ID: "bank-a", Addr: netip.MustParseAddr("10.99.0.1"), CA: testpki.NewCA(t, "bank-a")},
		{ID: "bank-b", Addr: netip.MustParseAddr("10.99.0.2"), CA: testpki.NewCA(t, "bank-b")},
	}
	signer, chain := specs[0].CA.Issue(t, "appliance").Identity()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fwd := ln.Addr().String()
	ln.Close()
	return tunnel.Config{Member: "bank-a", Signer: signer, Chain: chain,
		Transport: tunneltest.NewNetwork(tunneltest.Options{}).Transport("bank-a"),
		Authority: tunneltest.NewAuthority(specs, nil), Logger: testLogger(t),
		Forwards: []tunnel.Forward{{Listen: fwd, Member: "bank-b", Port: 7050}},
		Services: []tunnel.Service{{Port: 7051, Target: "127.0.0.1:1"}},
	}, fwd
}

// portFree reports whether addr can be listened on.
func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// TestLifecycle checks the contract of New, Run and Close: New starts no
// goroutine and opens no socket or file; Close works before Run and
// twice; Run brings everything up, signals Ready, and when its ctx ends
// (or Close is called) it returns nil, having stopped every goroutine and
// released the ports.
func TestLifecycle(t *testing.T) {
	t.Run("New starts nothing; Close before Run and twice", func(t *testing.T) {
		cfg, fwd := lifecycleConfig(t)
		var d *tunnel.Device
		lifecycletest.Quiet(t, "New", func() {
			var err error
			if d, err = tunnel.New(cfg); err != nil {
				t.Fatal(err)
			}
		})
		if !portFree(fwd) {
			t.Errorf("New bound the forward's port %s", fwd)
		}
		if got := d.ForwardAddrs(); got != nil {
			t.Errorf("ForwardAddrs before Run = %v, want nil", got)
		}
		if _, err := d.Listen(7052); !errors.Is(err, tunnel.ErrNotRunning) {
			t.Errorf("Listen before Run: err = %v, want ErrNotRunning", err)
		}
		if err := d.Rotate(context.Background()); !errors.Is(err, tunnel.ErrNotRunning) {
			t.Errorf("Rotate before Run: err = %v, want ErrNotRunning", err)
		}
		lifecycletest.Quiet(t, "SetAuthority before Run", func() { d.SetAuthority(cfg.Authority) })
		lifecycletest.Quiet(t, "Close before Run", func() {
			if err := d.Close(); err != nil {
				t.Errorf("Close before Run: %v", err)
			}
			if err := d.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
		if err := d.Run(context.Background()); !errors.Is(err, tunnel.ErrClosed) {
			t.Errorf("Run after Close: err = %v, want ErrClosed", err)
		}
		if _, err := d.Dial(context.Background(), "bank-b", 7050); !errors.Is(err, tunnel.ErrClosed) {
			t.Errorf("Dial after Close: err = %v, want ErrClosed", err)
		}
	})

	t.Run("Run until ctx ends", func(t *testing.T) {
		cfg, fwd := lifecycleConfig(t)
		d, err := tunnel.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		r := lifecycletest.Start(t, d.Run, d.Ready())
		if got := d.ForwardAddrs(); len(got) != 1 || got[0].String() != fwd {
			t.Fatalf("ForwardAddrs = %v, want [%s]", got, fwd)
		}
		if portFree(fwd) {
			t.Fatalf("forward %s not listening once Ready", fwd)
		}
		if err := d.Run(context.Background()); err == nil {
			t.Error("a second Run returned nil")
		}
		r.Stop()
		if !portFree(fwd) {
			t.Errorf("forward port %s still bound after Run returned", fwd)
		}
		if err := d.Close(); err != nil {
			t.Errorf("Close after Run: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("Close ends Run", func(t *testing.T) {
		cfg, _ := lifecycleConfig(t)
		d, err := tunnel.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		r := lifecycletest.Start(t, d.Run, d.Ready())
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		r.Wait()
	})
}

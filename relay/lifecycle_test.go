package relay_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/lifecycletest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay"
)

// dialCounter is a loopback TCP listener standing in for a relay: each
// connection is closed at once and reported on dialled.
func dialCounter(t *testing.T) (addr string, dialled <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), ch
}

// TestClientLifecycle checks the contract of NewClient, Run and Close:
// NewClient starts no goroutine and dials nothing; Close works before Run
// and twice; Run dials, and when its ctx ends it returns nil with every
// goroutine stopped and the client closed.
func TestClientLifecycle(t *testing.T) {
	cfg := func(addr string) relay.ClientConfig {
		return relay.ClientConfig{Identity: testpki.SelfSigned(t, "member").TLS(), NoEnvProxy: true,
			Relays:      []relay.RelayInfo{{ID: "r", Addr: addr, Pin: "sha256/AAAA"}},
			QUICTimeout: 50 * time.Millisecond, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond}
	}

	t.Run("NewClient starts nothing; Close before Run and twice", func(t *testing.T) {
		addr, dialled := dialCounter(t)
		var c *relay.Client
		lifecycletest.Quiet(t, "NewClient and SetRelays", func() {
			var err error
			if c, err = relay.NewClient(cfg(addr)); err != nil {
				t.Fatal(err)
			}
			if err := c.SetRelays(cfg(addr).Relays); err != nil {
				t.Fatal(err)
			}
		})
		select {
		case <-dialled:
			t.Error("the relay was dialled before Run")
		default:
		}
		lifecycletest.Quiet(t, "Close before Run", func() {
			if err := c.Close(); err != nil {
				t.Errorf("Close before Run: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
		if err := c.Run(context.Background()); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Run after Close: err = %v, want net.ErrClosed", err)
		}
	})

	t.Run("Run until ctx ends", func(t *testing.T) {
		addr, dialled := dialCounter(t)
		c, err := relay.NewClient(cfg(addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := lifecycletest.Start(t, c.Run, dialled)
		if err := c.Run(context.Background()); err == nil {
			t.Error("a second Run returned nil")
		}
		r.Stop()
		if err := c.WritePacket([]byte("x"), "m"); !errors.Is(err, net.ErrClosed) {
			t.Errorf("WritePacket after Run returned: err = %v, want net.ErrClosed", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close after Run: %v", err)
		}
	})
}

package tunnel_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// lanEcho is a TCP echo server on loopback standing in for a LAN service
// (e.g. a Fabric peer behind member b's appliance).
func lanEcho(t *testing.T) string {
	return lanServer(t, func(c net.Conn) { io.Copy(c, c) })
}

// lanServer serves every connection on a loopback port with handle (which
// must not close it), and returns the address.
func lanServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { handle(c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// TestServiceForward: a local port on member a forwards through the tunnel
// to an overlay port of member b, which forwards to a LAN service; both
// configured in Config, both ACL-checked.
func TestServiceForward(t *testing.T) {
	target := lanEcho(t)
	// a may reach b's service 9000, not 9001.
	acl := func(from, to string, port uint16) bool { return port == 9000 }
	c := newCluster(t, 2, clusterOpts{acl: acl, config: func(cfg *tunnel.Config) {
		switch cfg.Member {
		case "bank-a":
			cfg.Forwards = []tunnel.Forward{
				{Listen: "127.0.0.1:0", Member: "bank-b", Port: 9000},
				{Listen: "127.0.0.1:0", Member: "bank-b", Port: 9001},
			}
		case "bank-b":
			cfg.Services = []tunnel.Service{{Port: 9000, Target: target}, {Port: 9001, Target: target}}
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	addrs := c.devs["bank-a"].ForwardAddrs()
	if len(addrs) != 2 {
		t.Fatalf("forward addrs %v", addrs)
	}

	t.Run("allowed", func(t *testing.T) {
		conn, err := net.Dial("tcp", addrs[0].String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		n := int64(1 << 20)
		if testing.Short() {
			n = 64 << 10
		}
		// The echo returns what we send: check a whole round trip.
		if err := transfer(ctx, conn, conn, n, 9); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("denied", func(t *testing.T) {
		conn, err := net.Dial("tcp", addrs[1].String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		conn.Write([]byte("hello?"))
		buf := make([]byte, 16)
		n, err := conn.Read(buf)
		if err == nil || isTimeout(err) {
			t.Fatalf("denied forward answered (%d bytes, err %v)", n, err)
		}
		if c.devs["bank-a"].Stats().ACLDenied == 0 {
			t.Fatal("denial not counted")
		}
	})
}

func TestConfigValidate(t *testing.T) {
	c := newCluster(t, 1, clusterOpts{quiet: true})
	base := c.cfgs["bank-a"]
	c.devs["bank-a"].Close()
	for _, tc := range []struct {
		name string
		mod  func(*tunnel.Config)
	}{
		{"no member", func(c *tunnel.Config) { c.Member = "" }},
		{"member with space", func(c *tunnel.Config) { c.Member = "bank a" }},
		{"no signer", func(c *tunnel.Config) { c.Signer = nil }},
		{"no chain", func(c *tunnel.Config) { c.Chain = nil }},
		{"no transport", func(c *tunnel.Config) { c.Transport = nil }},
		{"no authority", func(c *tunnel.Config) { c.Authority = nil }},
		{"mtu too small", func(c *tunnel.Config) { c.MTU = 100 }},
		{"ttl below rotation", func(c *tunnel.Config) { c.RotateEvery = time.Hour; c.AttestationTTL = time.Minute }},
		{"forward bad listen", func(c *tunnel.Config) { c.Forwards = []tunnel.Forward{{Listen: "nope", Member: "bank-b", Port: 1}} }},
		{"forward no port", func(c *tunnel.Config) { c.Forwards = []tunnel.Forward{{Listen: "127.0.0.1:0", Member: "bank-b"}} }},
		{"service duplicate port", func(c *tunnel.Config) {
			c.Services = []tunnel.Service{{Port: 1, Target: "h:1"}, {Port: 1, Target: "h:2"}}
		}},
		{"service bad target", func(c *tunnel.Config) { c.Services = []tunnel.Service{{Port: 1, Target: ":80"}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.mod(&cfg)
			err := cfg.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			t.Log(err)
		})
	}
	if err := base.Validate(); err != nil {
		t.Fatalf("base config refused: %v", err)
	}
}

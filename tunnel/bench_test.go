package tunnel_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/memberd/memberd/internal/streamtest"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// Benchmarks compare, in one run, TCP through:
//   loopback      plain kernel TCP on 127.0.0.1 (the ceiling)
//   wg-udp        wireguard-go + netstack over its own UDP bind on loopback
//                 (conn.NewDefaultBind, MTU 1420): WireGuard without memberd
//   tunnel-mem    memberd's tunnel over the in-memory transport with a QUIC
//                 datagram limit (1240 B ⇒ MTU 1208)
//   tunnel-mem-1420  the same with a 1452-byte limit (MTU 1420), to separate
//                 the MTU from the transport cost
//   tunnel-relay  memberd's tunnel over one real relay (QUIC on loopback)
// Report ratios against wg-udp and loopback from the same run.

type pairFunc func(b *testing.B) (client, server net.Conn)

func benchPairs() []struct {
	name string
	mk   pairFunc
} {
	return []struct {
		name string
		mk   pairFunc
	}{
		{"loopback", loopbackPair},
		{"wg-udp", wgUDPPair},
		{"tunnel-mem", tunnelMemPair(0)},
		{"tunnel-mem-1420", tunnelMemPair(1452)},
		{"tunnel-relay", tunnelRelayPair},
	}
}

func loopbackPair(b *testing.B) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	acc := acceptOne(b, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s := <-acc
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func tunnelMemPair(maxPacket int) pairFunc {
	return func(b *testing.B) (net.Conn, net.Conn) {
		c := newCluster(b, 2, clusterOpts{quiet: true, net: tunneltest.Options{MaxPacketSize: maxPacket}})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return connect(b, ctx, c.devs["bank-a"], c.devs["bank-b"], "bank-b", 7050)
	}
}

func tunnelRelayPair(b *testing.B) (net.Conn, net.Conn) {
	devs, _ := relayCluster(b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return connect(b, ctx, devs["bank-a"], devs["bank-b"], "bank-b", 7050)
}

// wgUDPPair is two plain wireguard-go devices (netstack TUN, default UDP
// bind on loopback) peered with each other.
func wgUDPPair(b *testing.B) (net.Conn, net.Conn) {
	type side struct {
		dev  *device.Device
		tnet *netstack.Net
		priv tunnel.Key
		port int
		addr netip.Addr
	}
	mk := func(addr string) *side {
		ip := netip.MustParseAddr(addr)
		tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{ip}, nil, 1420)
		if err != nil {
			b.Fatal(err)
		}
		dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
		priv, _ := tunnel.NewPrivateKey()
		if err := dev.IpcSet("private_key=" + priv.String() + "\nlisten_port=0\n"); err != nil {
			b.Fatal(err)
		}
		if err := dev.Up(); err != nil {
			b.Fatal(err)
		}
		dump, _ := dev.IpcGet()
		port := 0
		for _, l := range strings.Split(dump, "\n") {
			if v, ok := strings.CutPrefix(l, "listen_port="); ok {
				port, _ = strconv.Atoi(v)
			}
		}
		if port == 0 {
			b.Fatal("no listen port")
		}
		b.Cleanup(func() { dev.Close() })
		return &side{dev: dev, tnet: tnet, priv: priv, port: port, addr: ip}
	}
	x, y := mk("10.98.0.1"), mk("10.98.0.2")
	peer := func(s, o *side) {
		cfg := fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/32\npersistent_keepalive_interval=25\n", o.priv.PublicKey(), o.port, o.addr)
		if err := s.dev.IpcSet(cfg); err != nil {
			b.Fatal(err)
		}
	}
	peer(x, y)
	peer(y, x)
	ln, err := y.tnet.ListenTCPAddrPort(netip.AddrPortFrom(y.addr, 7050))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	acc := acceptOne(b, ln)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := x.tnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(y.addr, 7050))
	if err != nil {
		b.Fatal(err)
	}
	s := <-acc
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// BenchmarkThroughput: one TCP stream, 64 KiB writes; MB/s is the figure.
func BenchmarkThroughput(b *testing.B) {
	for _, p := range benchPairs() {
		b.Run(p.name, func(b *testing.B) {
			c, s := p.mk(b)
			streamtest.Throughput(b, c, s)
		})
	}
}

// BenchmarkRTT: 64-byte ping-pong; ns/op is the round-trip time.
func BenchmarkRTT(b *testing.B) {
	for _, p := range benchPairs() {
		b.Run(p.name, func(b *testing.B) {
			c, s := p.mk(b)
			streamtest.RTT(b, c, s)
		})
	}
}

package consortium_test

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

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/streamtest"
	"github.com/memberd/memberd/tunnel"
)

// Benchmarks of the whole appliance path (member → relay → member, as
// 'memberd run' wires it: HSM identity, policy, relay client, tunnel), in
// one run next to its baselines:
//
//	loopback        plain kernel TCP on 127.0.0.1
//	wg-udp          wireguard-go + netstack over its default UDP bind, MTU 1420
//	appliance-quic  memberd appliances over two relays, QUIC path
//	appliance-tcp   the same with UDP blocked (relays' QUIC off): TLS over TCP
//
// Report the ratios appliance-*/wg-udp and appliance-*/loopback.

type benchPair struct {
	name string
	mk   func(b *testing.B) (net.Conn, net.Conn)
}

func benchPairs() []benchPair {
	return []benchPair{
		{"loopback", loopbackPair},
		{"wg-udp", wgUDPPair},
		{"appliance-quic", appliancePair(true)},
		{"appliance-tcp", appliancePair(false)},
	}
}

func loopbackPair(b *testing.B) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s := <-acc
	if s == nil {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func appliancePair(quic bool) func(b *testing.B) (net.Conn, net.Conn) {
	return func(b *testing.B) (net.Conn, net.Conn) {
		L := initConsortium(b, 2, 2)
		o := &demo.RunOptions{}
		if !quic {
			for _, m := range L.Members {
				editMemberConfig(b, L, m, func(c map[string]any) { c["relay"].(map[string]any)["quic_timeout"] = "300ms" })
			}
			o.QUICGate = make(chan struct{}) // never opened
		}
		d := start(b, L, o)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		x, y := pair(b, ctx, d.Device(L.Members[0]), d.Device(L.Members[1]), L.Members[1], 7050)
		for _, s := range d.RelayStatus(L.Members[0]) {
			if s.Active {
				b.Logf("%s sends on %s over %s", L.Members[0], s.ID, s.Path)
			}
		}
		return x, y
	}
}

// wgUDPPair: two plain wireguard-go devices (netstack, default UDP bind on
// loopback) peered with each other: WireGuard without memberd.
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
		b.Cleanup(dev.Close)
		dump, _ := dev.IpcGet()
		port := 0
		for _, l := range strings.Split(dump, "\n") {
			if v, ok := strings.CutPrefix(l, "listen_port="); ok {
				port, _ = strconv.Atoi(v)
			}
		}
		return &side{dev: dev, tnet: tnet, priv: priv, port: port, addr: ip}
	}
	x, y := mk("10.97.0.1"), mk("10.97.0.2")
	for _, p := range [][2]*side{{x, y}, {y, x}} {
		s, o := p[0], p[1]
		if err := s.dev.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/32\n", o.priv.PublicKey(), o.port, o.addr)); err != nil {
			b.Fatal(err)
		}
	}
	ln, err := y.tnet.ListenTCPAddrPort(netip.AddrPortFrom(y.addr, 7050))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := x.tnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(y.addr, 7050))
	if err != nil {
		b.Fatal(err)
	}
	s := <-acc
	if s == nil {
		b.Fatal("accept failed")
	}
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

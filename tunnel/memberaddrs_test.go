package tunnel_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

func TestMemberAddr(t *testing.T) {
	for _, tc := range []struct {
		prefix, overlay, want string // want "" = no address
	}{
		{"127.77.0.0/16", "100.64.0.3", "127.77.0.3"},
		{"127.77.0.0/16", "100.64.1.200", "127.77.1.200"},
		{"127.77.5.0/24", "10.99.0.7", "127.77.5.7"},
		{"127.77.0.0/20", "100.64.255.9", "127.77.15.9"}, // bits past /20 only
		{"127.77.0.99/16", "100.64.0.3", "127.77.0.3"},   // prefix's host bits ignored
		{"127.77.0.0/16", "::ffff:100.64.0.4", "127.77.0.4"},
		{"127.77.0.0/16", "100.64.0.0", ""}, // the prefix's own address
		{"127.77.0.0/16", "fd00::3", ""},    // other family
		{"fd77::/64", "fd00::1:3", "fd77::1:3"},
	} {
		got, ok := tunnel.MemberAddr(netip.MustParsePrefix(tc.prefix), netip.MustParseAddr(tc.overlay))
		if tc.want == "" {
			if ok {
				t.Errorf("MemberAddr(%s, %s) = %s, want none", tc.prefix, tc.overlay, got)
			}
			continue
		}
		if !ok || got != netip.MustParseAddr(tc.want) {
			t.Errorf("MemberAddr(%s, %s) = %s, %v; want %s", tc.prefix, tc.overlay, got, ok, tc.want)
		}
	}
}

func TestMemberAddrsValidate(t *testing.T) {
	c := newCluster(t, 1, clusterOpts{quiet: true})
	base := c.cfgs["bank-a"]
	c.devs["bank-a"].Close()
	for name, m := range map[string]*tunnel.MemberAddrs{
		"no prefix":      {Ports: []uint16{30303}},
		"host prefix":    {Prefix: netip.MustParsePrefix("127.77.0.1/32"), Ports: []uint16{30303}},
		"no ports":       {Prefix: netip.MustParsePrefix("127.77.0.0/16")},
		"port zero":      {Prefix: netip.MustParsePrefix("127.77.0.0/16"), Ports: []uint16{0}},
		"duplicate port": {Prefix: netip.MustParsePrefix("127.77.0.0/16"), Ports: []uint16{30303, 30303}},
	} {
		cfg := base
		cfg.MemberAddrs = m
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	cfg := base
	cfg.MemberAddrs = &tunnel.MemberAddrs{Prefix: netip.MustParsePrefix("127.77.0.0/16"), Ports: []uint16{30303, 30304}}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid member_addresses refused: %v", err)
	}
}

// nameServer is a LAN service that writes name to every connection and
// closes it: it shows which member a connection reached.
func nameServer(t *testing.T, name string) string {
	return lanServer(t, func(c net.Conn) { io.WriteString(c, name) })
}

// readName dials addr and returns what the far end wrote.
func readName(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestMemberAddrs: bank-a gives bank-b and bank-c a loopback address each
// (from their overlay addresses) with the same port, which reaches that
// member's service on that port; a policy without bank-c closes its
// address, and one with bank-c again reopens it.
func TestMemberAddrs(t *testing.T) {
	// A /24 and a port of this test process's own, so that parallel test
	// binaries do not collide on 127.0.0.0/8.
	prefix := netip.MustParsePrefix(fmt.Sprintf("127.%d.%d.0/24", 100+os.Getpid()%100, os.Getpid()/100%250))
	port := uint16(20000 + os.Getpid()%20000)
	c := newCluster(t, 3, clusterOpts{config: func(cfg *tunnel.Config) {
		if cfg.Member == "bank-a" {
			cfg.MemberAddrs = &tunnel.MemberAddrs{Prefix: prefix, Ports: []uint16{port}}
			return
		}
		cfg.Services = []tunnel.Service{{Port: port, Target: nameServer(t, cfg.Member)}}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a := c.devs["bank-a"]

	want := map[string]netip.Addr{}
	for _, s := range c.specs[1:] {
		addr, _ := tunnel.MemberAddr(prefix, s.Addr)
		want[s.ID] = addr
	}
	got := a.MemberAddrs()
	if len(got) != 2 || got["bank-b"] != want["bank-b"] || got["bank-c"] != want["bank-c"] {
		t.Fatalf("MemberAddrs() = %v, want %v (none for bank-a itself)", got, want)
	}
	at := func(m string) string { return netip.AddrPortFrom(want[m], port).String() }
	for _, m := range []string{"bank-b", "bank-c"} {
		name, err := readName(at(m))
		if err != nil || name != m {
			t.Fatalf("%s (member address of %s): got %q, %v", at(m), m, name, err)
		}
		t.Logf("%s reached %s", at(m), name)
	}

	// bank-c leaves the policy: its address stops listening.
	a.SetAuthority(tunneltest.NewAuthority(c.specs[:2], nil))
	if got := a.MemberAddrs(); len(got) != 1 || got["bank-b"] != want["bank-b"] {
		t.Fatalf("after bank-c left: MemberAddrs() = %v", got)
	}
	if _, err := net.DialTimeout("tcp", at("bank-c"), 5*time.Second); err == nil {
		t.Fatalf("%s still accepts after bank-c left the policy", at("bank-c"))
	}
	if name, err := readName(at("bank-b")); err != nil || name != "bank-b" {
		t.Fatalf("bank-b after bank-c left: %q, %v", name, err)
	}

	// bank-c comes back: its address is open again.
	a.SetAuthority(c.auth)
	name, err := readName(at("bank-c"))
	if err != nil || name != "bank-c" {
		t.Fatalf("bank-c back in the policy: %s gave %q, %v", at("bank-c"), name, err)
	}

	// bank-b and bank-c swap overlay addresses: in the same policy change
	// each address is closed and reopened for the other member. (Only the
	// listeners are checked: a member's own new overlay address needs its
	// restart, so traffic would not follow.)
	swapped := append([]tunneltest.MemberSpec(nil), c.specs...)
	swapped[1].Addr, swapped[2].Addr = c.specs[2].Addr, c.specs[1].Addr
	a.SetAuthority(tunneltest.NewAuthority(swapped, nil))
	if got := a.MemberAddrs(); len(got) != 2 || got["bank-b"] != want["bank-c"] || got["bank-c"] != want["bank-b"] {
		t.Fatalf("after the swap: MemberAddrs() = %v, want bank-b at %s and bank-c at %s", got, want["bank-c"], want["bank-b"])
	}
	for _, m := range []string{"bank-b", "bank-c"} {
		conn, err := net.DialTimeout("tcp", at(m), 5*time.Second)
		if err != nil {
			t.Fatalf("%s after the swap: %v", at(m), err)
		}
		conn.Close()
	}
	a.SetAuthority(c.auth)

	// Close stops every member address.
	a.Close()
	if _, err := net.DialTimeout("tcp", at("bank-b"), 5*time.Second); err == nil {
		t.Fatalf("%s still accepts after Close", at("bank-b"))
	}
}

// TestMemberAddrsUnusable: a prefix whose addresses are not on this host
// fails Run's start-up (New opens nothing) with an error that names the
// fix.
func TestMemberAddrsUnusable(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{quiet: true})
	cfg := c.cfgs["bank-a"]
	c.devs["bank-a"].Close()
	cfg.Transport = tunneltest.NewNetwork(tunneltest.Options{}).Transport("bank-a")
	cfg.MemberAddrs = &tunnel.MemberAddrs{Prefix: nonLocalPrefix(t), Ports: []uint16{30303}}
	d, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = d.Run(ctx)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run accepted member addresses that cannot be listened on: %v", err)
	}
	select {
	case <-d.Ready():
		t.Fatal("Ready closed although Run failed to start")
	default:
	}
	t.Log(err)
}

// nonLocalPrefix is a documentation /24 that no interface of this host has
// an address in.
func nonLocalPrefix(t *testing.T) netip.Prefix {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
next:
	for _, p := range []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"} {
		pfx := netip.MustParsePrefix(p)
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && pfx.Contains(ip.Unmap()) {
					continue next
				}
			}
		}
		return pfx
	}
	t.Fatalf("every documentation /24 has an address on this host (%v)", addrs)
	return netip.Prefix{}
}

package geth_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testenv"
)

// netnsTools skips without geth (as every test here), then checks for
// root, ip and nft (failing under CI without them) and returns ip and nft.
func netnsTools(t *testing.T) (ipBin, nftBin string) {
	if os.Getenv("MEMBERD_GETH") == "" {
		gethBinary(t) // skips with the reason
	}
	testenv.Root(t)
	return testenv.Command(t, "ip", "iproute2"), testenv.Command(t, "nft", "nftables")
}

// TestGethQUICToTCP: both members (appliances and geth nodes) run in a
// network namespace, the relays outside it on a veth address. Once the
// nodes peer and gossip over QUIC, an nftables rule in the namespace drops
// the relays' UDP silently: the appliances must move to TCP, and the devp2p
// session must survive or come back, with gossip still flowing.
func TestGethQUICToTCP(t *testing.T) {
	ipBin, nftBin := netnsTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	// 10.230.N.1 (root side, relays) / 10.230.N.2 (namespace, members).
	pid := os.Getpid()
	n := pid%200 + 20
	ns, vh, vn := fmt.Sprintf("mdg%d", pid), fmt.Sprintf("mdgh%d", pid), fmt.Sprintf("mdgn%d", pid)
	hostIP, nsIP := fmt.Sprintf("10.230.%d.1", n), fmt.Sprintf("10.230.%d.2", n)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() {
		exec.Command(ipBin, "netns", "del", ns).Run()
		exec.Command(ipBin, "link", "del", vh).Run() // goes with the namespace; in case
	})
	ip("link", "add", vh, "type", "veth", "peer", "name", vn)
	ip("link", "set", vn, "netns", ns)
	ip("addr", "add", hostIP+"/30", "dev", vh)
	ip("link", "set", vh, "up")
	ip("-n", ns, "addr", "add", nsIP+"/30", "dev", vn)
	ip("-n", ns, "link", "set", vn, "up")
	ip("-n", ns, "link", "set", "lo", "up")

	var relayAddrs []string
	for range 2 {
		l, err := net.Listen("tcp", hostIP+":0")
		if err != nil {
			t.Fatal(err)
		}
		relayAddrs = append(relayAddrs, l.Addr().String())
		l.Close()
	}
	member := place{wrap: []string{ipBin, "netns", "exec", ns}, host: nsIP}
	s := setup(ctx, t, layout{relayAddrs: relayAddrs, members: [2]place{member, member}})
	for _, a := range s.apps {
		if _, path, err := a.activeRelay(ctx); err != nil || path != "quic" {
			t.Fatalf("%s: active relay path %q (%v), want quic before UDP is blocked", a.member, path, err)
		}
	}
	raft := s.raftViews()
	s.sendAndSeeAtB("first transaction (QUIC)")

	var rules strings.Builder
	// A silent drop, as a firewall on the path does: the relays' UDP
	// answers never arrive. (A drop in the output hook would fail sendmsg
	// with EPERM at once, which QUIC notices without any timeout.)
	rules.WriteString("table inet memberd_geth_test {\n chain in {\n  type filter hook input priority 0; policy accept;\n")
	for _, a := range relayAddrs {
		_, p, _ := net.SplitHostPort(a)
		rules.WriteString("  ip saddr " + hostIP + " udp sport " + p + " counter drop\n")
	}
	rules.WriteString(" }\n}\n")
	nft := exec.Command(ipBin, "netns", "exec", ns, nftBin, "-f", "-")
	nft.Stdin = strings.NewReader(rules.String())
	blocked := time.Now()
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s\n%s", err, out, rules.String())
	}
	t.Logf("UDP to the relays dropped in the namespace")
	for _, a := range s.apps {
		err := eventually(ctx, 60*time.Second, 100*time.Millisecond, func() error {
			_, path, err := a.activeRelay(ctx)
			if err == nil && path != "tcp" {
				err = fmt.Errorf("%s: active path %s", a.member, path)
			}
			return err
		})
		if err != nil {
			t.Fatalf("%s did not move to TCP: %v\n%s", a.member, err, a.proc.tail())
		}
		t.Logf("%s on TCP %v after UDP was blocked", a.member, time.Since(blocked).Round(100*time.Millisecond))
	}
	s.watchSession("QUIC to TCP", blocked, 20*time.Second)
	s.sendAndSeeAtB("transaction over TCP")
	s.checkAppliancesRunning(raft)
}

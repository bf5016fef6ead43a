package geth_test

import (
	"context"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/netnstest"
)

// Hosts of TestGethFirewalledMembers, on the test's own bridge (netnstest:
// not connected to the root namespace).
const (
	fwRelay1 = "10.78.0.11"
	fwRelay2 = "10.78.0.12"
	fwA      = "10.78.0.21"
	fwB      = "10.78.0.22"
)

// memberFirewall is a DMZ host's nftables ruleset: in, only loopback and
// replies to its own flows; out, only loopback and the relays' port 443
// (UDP for QUIC, TCP for the fallback). Everything else is dropped and
// counted.
func memberFirewall(relays ...string) string {
	set := strings.Join(relays, ", ")
	return "table inet member_fw {\n" +
		" chain in {\n  type filter hook input priority 0; policy drop;\n  iif lo accept\n  ct state established,related accept\n" +
		"  counter comment \"dropped in\"\n }\n" +
		" chain out {\n  type filter hook output priority 0; policy drop;\n  oif lo accept\n" +
		"  ip daddr { " + set + " } udp dport 443 accept\n  ip daddr { " + set + " } tcp dport 443 accept\n" +
		"  counter comment \"dropped out\"\n }\n}\n"
}

// droppedPackets reads the packet count of the counter with comment in h's
// member_fw table.
func droppedPackets(t *testing.T, h *netnstest.Host, nftBin, comment string) int {
	t.Helper()
	out, err := h.NftOut(nftBin, "list", "table", "inet", "member_fw")
	if err != nil {
		t.Fatalf("nft list in %s: %v\n%s", h.NS, err, out)
	}
	m := regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "` + comment + `"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no counter %q in %s's member_fw:\n%s", comment, h.NS, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// dialFrom opens a TCP connection from host from to addr (3 s at most) and
// closes it; nil means the connection was established.
func dialFrom(from *netnstest.Host, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

// TestGethFirewalledMembers: members A and B each on a host of their own
// (network namespace) whose firewall lets nothing out but the relays' port
// 443 and nothing in but replies; the relays on two more hosts. Each geth
// listens on its host's LAN address at the same port (devp2pPort), and the
// appliances give each other member an address of its own
// (tunnel.member_addresses 127.77.0.0/16), so each node's static peer is
// enode://<id>@127.77.0.<other's overlay host part>:devp2pPort. The test
// shows that a direct TCP connection from A's host (or a relay's) to B's
// node fails while the firewall is there and succeeds once it is removed,
// and that the nodes still peer with eth and gossip transactions through
// the tunnel, also after the relay A sends on is killed.
func TestGethFirewalledMembers(t *testing.T) {
	ipBin, nftBin := netnsTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	n := netnstest.New(t, ipBin, 24)
	r1, r2 := n.AddHost("relay1", fwRelay1), n.AddHost("relay2", fwRelay2)
	hosts := [2]*netnstest.Host{n.AddHost("a", fwA), n.AddHost("b", fwB)}
	rules := memberFirewall(fwRelay1, fwRelay2)
	for _, h := range hosts {
		if err := h.Nft(nftBin, rules); err != nil {
			t.Fatal(err)
		}
	}
	wrap := func(h *netnstest.Host) []string { return []string{ipBin, "netns", "exec", h.NS} }
	var members [2]place
	for i, h := range hosts {
		members[i] = place{wrap: wrap(h), client: &http.Client{Transport: &http.Transport{DialContext: h.DialContext, DisableKeepAlives: true}}}
	}
	s := setup(ctx, t, layout{
		relayAddrs:  []string{fwRelay1 + ":443", fwRelay2 + ":443"},
		relays:      [2]place{{wrap: wrap(r1)}, {wrap: wrap(r2)}},
		members:     members,
		p2pHosts:    [2]string{fwA, fwB},
		memberAddrs: netip.MustParsePrefix("127.77.0.0/16"),
	})

	// B's node answers on B's LAN address (from B's own host: loopback)...
	bNode := s.nodes[1].p2pAddr()
	if err := dialFrom(hosts[1], bNode); err != nil {
		t.Fatalf("geth-b does not listen on %s: %v", bNode, err)
	}
	// ...but neither A's host nor any other host reaches it.
	outBefore, inBefore := droppedPackets(t, hosts[0], nftBin, "dropped out"), droppedPackets(t, hosts[1], nftBin, "dropped in")
	if err := dialFrom(hosts[0], bNode); err == nil {
		t.Fatalf("A's host opened a TCP connection to geth-b at %s: the member firewall is not in force", bNode)
	} else {
		t.Logf("A's host to geth-b at %s directly: %v", bNode, err)
	}
	if err := dialFrom(r1, bNode); err == nil {
		t.Fatalf("relay1's host opened a TCP connection to geth-b at %s: B's firewall lets inbound through", bNode)
	} else {
		t.Logf("relay1's host to geth-b at %s directly: %v", bNode, err)
	}
	outAfter, inAfter := droppedPackets(t, hosts[0], nftBin, "dropped out"), droppedPackets(t, hosts[1], nftBin, "dropped in")
	if outAfter == outBefore || inAfter == inBefore {
		t.Fatalf("the direct connections failed without the firewalls counting a drop (A out %d→%d, B in %d→%d)", outBefore, outAfter, inBefore, inAfter)
	}

	raft := s.raftViews()
	s.sendAndSeeAtB("first transaction (firewalled hosts)")

	s.killActiveRelay()
	s.checkAppliancesRunning(raft)
	for i, h := range hosts {
		t.Logf("%s's firewall dropped %d packets out and %d in", s.apps[i].member,
			droppedPackets(t, h, nftBin, "dropped out"), droppedPackets(t, h, nftBin, "dropped in"))
	}

	// The control: without the firewalls, the same direct connection works,
	// so it was the firewall (not an unreachable address) that stopped it.
	for _, h := range hosts {
		if out, err := h.NftOut(nftBin, "delete", "table", "inet", "member_fw"); err != nil {
			t.Fatalf("removing the firewall in %s: %v\n%s", h.NS, err, out)
		}
	}
	if err := dialFrom(hosts[0], bNode); err != nil {
		t.Fatalf("with the firewalls removed A's host still cannot reach geth-b at %s (%v): the test's negative check proves nothing", bNode, err)
	}
	t.Logf("control: with the firewalls removed, A's host reaches geth-b at %s directly", bNode)
}

package geth_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/tunnel"
)

// devp2pPort is the overlay port each appliance exposes its geth node on.
// It is inside the demo policy's ACL (7050-7059 between all members), so
// the scenario needs no policy change; docs/quorum.md shows the ACL entry
// for a dedicated port such as 30303.
const devp2pPort = 7055

// gethBinary is geth from MEMBERD_GETH (`make e2e-geth` installs it from
// the Go module proxy into ~/.cache/memberd-geth/<version>/ and sets it).
func gethBinary(t *testing.T) string {
	path := os.Getenv("MEMBERD_GETH")
	if path == "" {
		t.Skip("MEMBERD_GETH is not set: run `make e2e-geth`, which installs geth from the Go module proxy and runs this test")
	}
	out, err := exec.Command(path, "version").CombinedOutput()
	if err != nil {
		testenv.Missing(t, fmt.Sprintf("geth at MEMBERD_GETH=%s (%v: %s)", path, err, strings.TrimSpace(string(out))),
			"`make e2e-geth` builds it with go install github.com/ethereum/go-ethereum/cmd/geth@$(GETH_VERSION)")
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Version:") {
			t.Logf("geth %s", strings.TrimSpace(strings.TrimPrefix(l, "Version:")))
		}
	}
	return path
}

// memberdBinary is MEMBERD_BIN, or memberd built into dir.
func memberdBinary(t *testing.T, dir string) string { return testenv.Memberd(t, "MEMBERD_BIN", dir) }

// appliance is one `memberd run` with the addresses the test uses.
type appliance struct {
	member  string
	config  string
	admin   string
	client  *http.Client // reaches admin; nil = http.DefaultClient
	forward string       // where this member's geth dials the other's: its forward or member address
	proc    *process
}

type applianceStatus struct {
	Ledger struct {
		Leader string `json:"leader"`
		Term   uint64 `json:"term"`
	} `json:"ledger"`
	Tunnel struct {
		Peers []struct {
			Member     string `json:"member"`
			MemberAddr string `json:"member_addr"`
		} `json:"peers"`
	} `json:"tunnel"`
	Relays []struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Path   string `json:"path"`
		Active bool   `json:"active"`
	} `json:"relays"`
}

// raft is the appliance's view of the ledger's raft leader and term.
func (a *appliance) raft(ctx context.Context) (string, error) {
	var st applianceStatus
	if err := httpJSON(ctx, a.client, "http://"+a.admin+"/status", &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("leader %s term %d", st.Ledger.Leader, st.Ledger.Term), nil
}

// activeRelay is the relay the appliance sends on, with its path.
func (a *appliance) activeRelay(ctx context.Context) (id, path string, err error) {
	var st applianceStatus
	if err := httpJSON(ctx, a.client, "http://"+a.admin+"/status", &st); err != nil {
		return "", "", err
	}
	for _, r := range st.Relays {
		if r.Active && r.State == "up" {
			return r.ID, r.Path, nil
		}
	}
	return "", "", fmt.Errorf("%s: no active relay in /status (%+v)", a.member, st.Relays)
}

// place is where one process runs and how the test reaches it.
type place struct {
	wrap   []string     // command prefix (e.g. ip netns exec NS); nil = this namespace
	host   string       // address its admin and RPC endpoints listen on; "" = 127.0.0.1
	client *http.Client // reaches host (e.g. dialling inside a namespace); nil = http.DefaultClient
}

// layout says where the scenario's processes run.
type layout struct {
	relayAddrs []string  // --relay-addr for demo init; nil = loopback
	relays     [2]place  // the relays, in demo.yaml's order
	members    [2]place  // appliance and geth node of each member
	p2pHosts   [2]string // each geth's devp2p listen host; "" = 127.0.0.1
	// memberAddrs, if valid, is the tunnel.member_addresses prefix: the
	// appliances give each other member a local address there, every geth
	// listens on devp2pPort and dials its peer at <member address>:devp2pPort.
	// Else each appliance has one forward on a free loopback port.
	memberAddrs netip.Prefix
}

// scenario is two members (appliance + geth each) and two relays, peered.
type scenario struct {
	t      *testing.T
	ctx    context.Context
	L      demoLayout
	demo   string // the demo consortium's folder
	apps   [2]*appliance
	nodes  [2]*gethNode
	relays map[string]*process
	peers  [2]*peer // as each node saw the other after peering
	wallet *key     // funded in the genesis
	nonce  uint64
}

// demoPolicy is the demo consortium's genesis policy.
func demoPolicy(t *testing.T, demo string) *policy.Policy {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(demo, "genesis.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// memberAddr is member's address under prefix (tunnel.member_addresses),
// from its overlay address in the demo consortium's genesis policy.
func memberAddr(t *testing.T, demo string, prefix netip.Prefix, member string) netip.Addr {
	t.Helper()
	m := demoPolicy(t, demo).Member(member)
	if m == nil {
		t.Fatalf("genesis.yaml has no member %s", member)
	}
	overlay, err := netip.ParseAddr(m.OverlayIP)
	if err != nil {
		t.Fatalf("%s's overlay_ip: %v", member, err)
	}
	addr, ok := tunnel.MemberAddr(prefix, overlay)
	if !ok {
		t.Fatalf("%s's overlay address %s has no address under %s", member, overlay, prefix)
	}
	return addr
}

// setup starts the consortium from `memberd demo init`, the two geth nodes
// wired through service forwards, and waits until they peer with eth.
func setup(ctx context.Context, t *testing.T, lay layout) *scenario {
	geth := gethBinary(t)
	testenv.SoftHSMModule(t)
	dir := t.TempDir()
	bin := memberdBinary(t, dir)
	s := &scenario{t: t, ctx: ctx, relays: map[string]*process{}}
	for i := range lay.members {
		if lay.members[i].host == "" {
			lay.members[i].host = "127.0.0.1"
		}
	}

	demo := filepath.Join(dir, "consortium")
	s.demo = demo
	args := []string{"demo", "init", "--members", "2", "--relays", "2", "--dir", demo}
	for _, a := range lay.relayAddrs {
		args = append(args, "--relay-addr", a)
	}
	if out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("memberd demo init: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(demo, "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &s.L); err != nil || len(s.L.Members) != 2 || len(s.L.Relays) != 2 {
		t.Fatalf("demo.yaml: %v (members %v, relays %v)", err, s.L.Members, s.L.Relays)
	}
	env := append(os.Environ(), "SOFTHSM2_CONF="+s.L.SoftHSMConf)

	if s.wallet, err = newKey(); err != nil {
		t.Fatal(err)
	}
	genesis := genesisJSON(s.wallet.address())
	for i, name := range []string{"geth-a", "geth-b"} {
		pl := lay.members[i]
		s.nodes[i] = newGethNode(t, geth, dir, name, genesis, pl.host)
		s.nodes[i].client = pl.client
		if lay.p2pHosts[i] != "" {
			s.nodes[i].p2pHost = lay.p2pHosts[i]
		}
		if lay.memberAddrs.IsValid() {
			s.nodes[i].p2pPort = devp2pPort
		}
	}

	for i, m := range s.L.Members {
		pl := lay.members[i]
		a := &appliance{member: m, config: s.L.MemberConfig[m], client: pl.client}
		section := fmt.Sprintf("tunnel:\n  services:\n    - {port: %d, target: %q}\n", devp2pPort, s.nodes[i].p2pAddr())
		if lay.memberAddrs.IsValid() {
			other := memberAddr(t, demo, lay.memberAddrs, s.L.Members[1-i])
			a.forward = netip.AddrPortFrom(other, devp2pPort).String()
			section += fmt.Sprintf("  member_addresses:\n    prefix: %s\n    ports: [%d]\n", lay.memberAddrs, devp2pPort)
		} else {
			a.forward = fmt.Sprintf("127.0.0.1:%d", loopbackPort(t))
			section += fmt.Sprintf("  forwards:\n    - {listen: %q, member: %s, port: %d}\n", a.forward, s.L.Members[1-i], devp2pPort)
		}
		if a.admin, err = addTunnelSection(a.config, section, pl.host); err != nil {
			t.Fatal(err)
		}
		s.apps[i] = a
	}
	for i, id := range s.L.Relays {
		cmd := append(append([]string(nil), lay.relays[i].wrap...), bin, "relay", "--config", s.L.RelayConfig[id])
		s.relays[id] = startProcess(t, dir, id, env, cmd[0], cmd[1:]...)
	}
	for i, a := range s.apps {
		cmd := append(append([]string(nil), lay.members[i].wrap...), bin, "run", "--config", a.config)
		a.proc = startProcess(t, dir, a.member, env, cmd[0], cmd[1:]...)
	}
	for _, a := range s.apps {
		err := eventually(ctx, 90*time.Second, 200*time.Millisecond, func() error {
			if !a.proc.running() {
				t.Fatalf("%s exited: %v\n%s", a.member, a.proc.err, a.proc.tail())
			}
			if err := httpJSON(ctx, a.client, "http://"+a.admin+"/readyz", nil); err != nil {
				return err
			}
			_, _, err := a.activeRelay(ctx)
			return err
		})
		if err != nil {
			t.Fatalf("%s not ready: %v\n%s", a.member, err, a.proc.tail())
		}
	}
	if lay.memberAddrs.IsValid() {
		// /status names the member address the test derived.
		for i, a := range s.apps {
			want, _, _ := net.SplitHostPort(a.forward)
			err := eventually(ctx, 30*time.Second, 200*time.Millisecond, func() error {
				var st applianceStatus
				if err := httpJSON(ctx, a.client, "http://"+a.admin+"/status", &st); err != nil {
					return err
				}
				for _, p := range st.Tunnel.Peers {
					if p.Member == s.L.Members[1-i] && p.MemberAddr == want {
						return nil
					}
				}
				return fmt.Errorf("%s /status tunnel.peers %+v: no %s with member_addr %s", a.member, st.Tunnel.Peers, s.L.Members[1-i], want)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("consortium up: relays %v, appliances %s (forward %s) and %s (forward %s)", s.L.Relays, s.apps[0].member, s.apps[0].forward, s.apps[1].member, s.apps[1].forward)

	// Each node's only peer is the other node, dialled at its own local forward.
	started := time.Now()
	// With member addresses both nodes get the same list, each node's own
	// entry included (geth skips its own id), as an operator would ship it.
	statics := [2][]string{{s.nodes[1].enode(s.apps[0].forward)}, {s.nodes[0].enode(s.apps[1].forward)}}
	if lay.memberAddrs.IsValid() {
		same := []string{s.nodes[0].enode(s.apps[1].forward), s.nodes[1].enode(s.apps[0].forward)}
		statics = [2][]string{same, same}
	}
	s.nodes[0].start(t, geth, dir, lay.members[0].wrap, statics[0]...)
	s.nodes[1].start(t, geth, dir, lay.members[1].wrap, statics[1]...)
	for _, n := range s.nodes {
		if err := eventually(ctx, 60*time.Second, 200*time.Millisecond, func() error {
			if !n.proc.running() {
				t.Fatalf("%s exited: %v\n%s", n.name, n.proc.err, n.proc.tail())
			}
			return n.markSynced(ctx)
		}); err != nil {
			t.Fatalf("%v\n%s", err, n.proc.tail())
		}
	}
	err = eventually(ctx, 60*time.Second, 200*time.Millisecond, func() error {
		for i, n := range s.nodes {
			p, err := n.ethPeer(ctx, s.nodes[1-i].key.nodeID())
			if err != nil {
				return err
			}
			s.peers[i] = p
		}
		return nil
	})
	if err != nil {
		t.Fatalf("nodes did not peer: %v\n%s\n%s\n%s\n%s", err, s.nodes[0].proc.tail(), s.nodes[1].proc.tail(), s.apps[0].proc.tail(), s.apps[1].proc.tail())
	}
	t.Logf("peered with eth in %v (from geth start)", time.Since(started).Round(time.Millisecond))
	// The outbound side of the one devp2p connection dialled its forward.
	dialled := false
	for i, p := range s.peers {
		t.Logf("%s sees %.16s…: local %s remote %s inbound=%v static=%v protocols=%v", s.nodes[i].name, p.Enode,
			p.Network.LocalAddress, p.Network.RemoteAddress, p.Network.Inbound, p.Network.Static, keys(p.Protocols))
		if !p.Network.Inbound {
			if p.Network.RemoteAddress != s.apps[i].forward {
				t.Fatalf("%s dialled %s, not its forward %s", s.nodes[i].name, p.Network.RemoteAddress, s.apps[i].forward)
			}
			dialled = true
		}
	}
	if !dialled {
		t.Fatal("neither node shows an outbound connection")
	}
	return s
}

// sendAndSeeAtB signs a transaction, sends it to A's node and waits until
// it is in B's txpool; it returns how long that took.
func (s *scenario) sendAndSeeAtB(label string) time.Duration {
	t := s.t
	t.Helper()
	to := make([]byte, 20)
	to[19] = byte(s.nonce + 1)
	rawTx, hash, err := signTx(s.wallet, legacyTx{Nonce: s.nonce, GasPrice: big.NewInt(10e9), Gas: 21000, To: to, Value: big.NewInt(1e15)}, chainID)
	if err != nil {
		t.Fatal(err)
	}
	s.nonce++
	want := "0x" + hex.EncodeToString(hash)
	var got string
	sent := time.Now()
	if err := s.nodes[0].call(s.ctx, false, &got, "eth_sendRawTransaction", "0x"+hex.EncodeToString(rawTx)); err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	if got != want {
		t.Fatalf("%s: geth-a returned hash %s, the wallet computed %s", label, got, want)
	}
	err = eventually(s.ctx, 30*time.Second, 50*time.Millisecond, func() error {
		ok, err := s.nodes[1].pooled(s.ctx, s.wallet.address(), want)
		if err == nil && !ok {
			err = fmt.Errorf("tx %s from %s not in geth-b's txpool", want, s.wallet.address())
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v\n%s", label, err, s.nodes[1].proc.tail())
	}
	d := time.Since(sent)
	t.Logf("%s: tx %.14s… sent to geth-a, in geth-b's txpool after %v", label, want, d.Round(time.Millisecond))
	return d
}

// watchSession polls A's view of B every 100 ms for d after the event at
// since, and says whether the devp2p session survived (same TCP
// connection, never absent) or was replaced (and how long it was gone).
// A peer still absent at the end fails the test.
func (s *scenario) watchSession(event string, since time.Time, d time.Duration) {
	t := s.t
	t.Helper()
	before := s.peers[0].Network
	var absentFrom, absentTo time.Time
	sameConn := true
	for time.Since(since) < d {
		p, err := s.nodes[0].ethPeer(s.ctx, s.nodes[1].key.nodeID())
		now := time.Now()
		switch {
		case err != nil && absentFrom.IsZero():
			absentFrom = now
		case err == nil && !absentFrom.IsZero() && absentTo.IsZero():
			absentTo = now
		}
		if err == nil && (p.Network.LocalAddress != before.LocalAddress || p.Network.RemoteAddress != before.RemoteAddress) {
			sameConn = false
		}
		time.Sleep(100 * time.Millisecond)
	}
	switch {
	case absentFrom.IsZero() && sameConn:
		t.Logf("%s: the devp2p session survived (same connection %s↔%s, peer never absent in %v of 100 ms polls)", event, before.LocalAddress, before.RemoteAddress, d)
	case !absentFrom.IsZero() && absentTo.IsZero():
		t.Fatalf("%s: geth-a lost its peer %v after and had not reconnected after %v\n%s\n%s", event, absentFrom.Sub(since).Round(time.Millisecond), d, s.nodes[0].proc.tail(), s.apps[0].proc.tail())
	default:
		t.Logf("%s: the devp2p session was replaced (peer absent from %v to %v after, same connection %v)", event, absentFrom.Sub(since).Round(time.Millisecond), absentTo.Sub(since).Round(time.Millisecond), sameConn)
	}
}

// raftViews is each appliance's view of the raft leader and term.
func (s *scenario) raftViews() [2]string {
	var v [2]string
	for i, a := range s.apps {
		var err error
		if v[i], err = a.raft(s.ctx); err != nil {
			s.t.Fatal(err)
		}
	}
	return v
}

// checkAppliancesRunning fails the test if an appliance died, and logs
// whether the ledger's raft kept its leader and term since before.
func (s *scenario) checkAppliancesRunning(before [2]string) {
	for _, a := range s.apps {
		if !a.proc.running() {
			s.t.Fatalf("%s exited: %v\n%s", a.member, a.proc.err, a.proc.tail())
		}
	}
	after := s.raftViews()
	s.t.Logf("ledger raft before: %v; after: %v; unchanged: %v", before, after, before == after)
}

// killActiveRelay kill -9s the relay member A sends on, watches the devp2p
// session for 15 s and checks that a transaction still reaches B's pool.
func (s *scenario) killActiveRelay() {
	t := s.t
	t.Helper()
	relayID, path, err := s.apps[0].activeRelay(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killing %s (pid %d), %s's active relay (path %s)", relayID, s.relays[relayID].cmd.Process.Pid, s.apps[0].member, path)
	killed := time.Now()
	s.relays[relayID].cmd.Process.Signal(syscall.SIGKILL)
	<-s.relays[relayID].done
	s.watchSession("relay kill", killed, 15*time.Second)
	newRelay, newPath, err := s.apps[0].activeRelay(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s now sends on %s (path %s)", s.apps[0].member, newRelay, newPath)
	s.sendAndSeeAtB("transaction after the relay kill")
}

// TestGethPeersThroughTunnel: members A and B each run geth next to their
// appliance; each appliance exposes its node as tunnel service devp2pPort
// and forwards a local port to the other member's node. The nodes (no
// discovery, static peers = the local forwards) must peer with eth, gossip a
// signed transaction from A's pool to B's, and hold while the relay in use
// is killed.
func TestGethPeersThroughTunnel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	s := setup(ctx, t, layout{})
	raft := s.raftViews()
	s.sendAndSeeAtB("first transaction")

	s.killActiveRelay()
	s.checkAppliancesRunning(raft)
}

package geth_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/memberd/memberd/internal/testenv"
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
func memberdBinary(t *testing.T, dir string) string {
	if p := os.Getenv("MEMBERD_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	bin := filepath.Join(dir, "memberd")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/memberd/memberd/cmd/memberd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build memberd: %v\n%s", err, out)
	}
	return bin
}

// appliance is one `memberd run` with the addresses the test uses.
type appliance struct {
	member  string
	config  string
	admin   string
	forward string // 127.0.0.1:port forwarded to the other member's geth
	proc    *process
}

type applianceStatus struct {
	Relays []struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Path   string `json:"path"`
		Active bool   `json:"active"`
	} `json:"relays"`
}

// activeRelay is the relay the appliance sends on, with its path.
func (a *appliance) activeRelay(ctx context.Context) (id, path string, err error) {
	var st applianceStatus
	if err := httpJSON(ctx, "http://"+a.admin+"/status", &st); err != nil {
		return "", "", err
	}
	for _, r := range st.Relays {
		if r.Active && r.State == "up" {
			return r.ID, r.Path, nil
		}
	}
	return "", "", fmt.Errorf("%s: no active relay in /status (%+v)", a.member, st.Relays)
}

// TestGethPeersThroughTunnel: members A and B each run geth next to their
// appliance; each appliance exposes its node as tunnel service devp2pPort
// and forwards a local port to the other member's node. The nodes (no
// discovery, static peers = the local forwards) must peer with eth, gossip a
// signed transaction from A's pool to B's, and hold while the relay in use
// is killed.
func TestGethPeersThroughTunnel(t *testing.T) {
	geth := gethBinary(t)
	testenv.SoftHSMModule(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := memberdBinary(t, dir)

	demo := filepath.Join(dir, "consortium")
	if out, err := exec.CommandContext(ctx, bin, "demo", "init", "--members", "2", "--relays", "2", "--dir", demo).CombinedOutput(); err != nil {
		t.Fatalf("memberd demo init: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(demo, "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var L demoLayout
	if err := yaml.Unmarshal(raw, &L); err != nil || len(L.Members) != 2 || len(L.Relays) != 2 {
		t.Fatalf("demo.yaml: %v (members %v, relays %v)", err, L.Members, L.Relays)
	}
	env := append(os.Environ(), "SOFTHSM2_CONF="+L.SoftHSMConf)

	// The wallet's account is funded in the shared genesis.
	wallet, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	genesis := genesisJSON(wallet.address())
	nodes := []*gethNode{newGethNode(t, geth, dir, "geth-a", genesis), newGethNode(t, geth, dir, "geth-b", genesis)}

	apps := make([]*appliance, 2)
	for i, m := range L.Members {
		a := &appliance{member: m, config: L.MemberConfig[m], forward: fmt.Sprintf("127.0.0.1:%d", loopbackPort(t))}
		other := L.Members[1-i]
		section := fmt.Sprintf("tunnel:\n  services:\n    - {port: %d, target: \"127.0.0.1:%d\"}\n  forwards:\n    - {listen: %q, member: %s, port: %d}\n",
			devp2pPort, nodes[i].p2pPort, a.forward, other, devp2pPort)
		var err error
		if a.admin, err = addTunnelSection(a.config, section); err != nil {
			t.Fatal(err)
		}
		apps[i] = a
	}
	relays := map[string]*process{}
	for _, id := range L.Relays {
		relays[id] = startProcess(t, dir, id, env, bin, "relay", "--config", L.RelayConfig[id])
	}
	for _, a := range apps {
		a.proc = startProcess(t, dir, a.member, env, bin, "run", "--config", a.config)
	}
	for _, a := range apps {
		err := eventually(ctx, 90*time.Second, 200*time.Millisecond, func() error {
			if !a.proc.running() {
				t.Fatalf("%s exited: %v\n%s", a.member, a.proc.err, a.proc.tail())
			}
			if err := httpJSON(ctx, "http://"+a.admin+"/readyz", nil); err != nil {
				return err
			}
			_, _, err := a.activeRelay(ctx)
			return err
		})
		if err != nil {
			t.Fatalf("%s not ready: %v\n%s", a.member, err, a.proc.tail())
		}
	}
	t.Logf("consortium up: relays %v, appliances %s (forward %s) and %s (forward %s)", L.Relays, apps[0].member, apps[0].forward, apps[1].member, apps[1].forward)

	// Each node's only peer is the other node, dialled at its own local forward.
	started := time.Now()
	nodes[0].start(t, geth, dir, nodes[1].enode(apps[0].forward))
	nodes[1].start(t, geth, dir, nodes[0].enode(apps[1].forward))
	for _, n := range nodes {
		if err := eventually(ctx, 60*time.Second, 200*time.Millisecond, func() error {
			if !n.proc.running() {
				t.Fatalf("%s exited: %v\n%s", n.name, n.proc.err, n.proc.tail())
			}
			return n.markSynced(ctx)
		}); err != nil {
			t.Fatalf("%v\n%s", err, n.proc.tail())
		}
	}
	var peers [2]*peer
	err = eventually(ctx, 60*time.Second, 200*time.Millisecond, func() error {
		for i, n := range nodes {
			p, err := n.ethPeer(ctx, nodes[1-i].key.nodeID())
			if err != nil {
				return err
			}
			peers[i] = p
		}
		return nil
	})
	if err != nil {
		t.Fatalf("nodes did not peer: %v\n%s\n%s\n%s\n%s", err, nodes[0].proc.tail(), nodes[1].proc.tail(), apps[0].proc.tail(), apps[1].proc.tail())
	}
	t.Logf("peered with eth in %v (from geth start)", time.Since(started).Round(time.Millisecond))
	// The outbound side of the one devp2p connection dialled its forward.
	dialled := false
	for i, p := range peers {
		t.Logf("%s sees %.16s…: local %s remote %s inbound=%v static=%v protocols=%v", nodes[i].name, p.Enode,
			p.Network.LocalAddress, p.Network.RemoteAddress, p.Network.Inbound, p.Network.Static, keys(p.Protocols))
		if !p.Network.Inbound {
			if p.Network.RemoteAddress != apps[i].forward {
				t.Fatalf("%s dialled %s, not its forward %s", nodes[i].name, p.Network.RemoteAddress, apps[i].forward)
			}
			dialled = true
		}
	}
	if !dialled {
		t.Fatal("neither node shows an outbound connection")
	}

	// A signed transaction sent to A's node reaches B's pool.
	nonce := uint64(0)
	sendAndSeeAtB := func(label string) time.Duration {
		t.Helper()
		to := make([]byte, 20)
		to[19] = byte(nonce + 1)
		rawTx, hash, err := signTx(wallet, legacyTx{Nonce: nonce, GasPrice: big.NewInt(10e9), Gas: 21000, To: to, Value: big.NewInt(1e15)}, chainID)
		if err != nil {
			t.Fatal(err)
		}
		nonce++
		want := "0x" + hex.EncodeToString(hash)
		var got string
		sent := time.Now()
		if err := nodes[0].call(ctx, false, &got, "eth_sendRawTransaction", "0x"+hex.EncodeToString(rawTx)); err != nil {
			t.Fatalf("%s: %v", label, err)
		}
		if got != want {
			t.Fatalf("%s: geth-a returned hash %s, the wallet computed %s", label, got, want)
		}
		err = eventually(ctx, 30*time.Second, 50*time.Millisecond, func() error {
			ok, err := nodes[1].pooled(ctx, wallet.address(), want)
			if err == nil && !ok {
				err = fmt.Errorf("tx %s from %s not in geth-b's txpool", want, wallet.address())
			}
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v\n%s", label, err, nodes[1].proc.tail())
		}
		d := time.Since(sent)
		t.Logf("%s: tx %.14s… sent to geth-a, in geth-b's txpool after %v", label, want, d.Round(time.Millisecond))
		return d
	}
	sendAndSeeAtB("first transaction")

	// Kill -9 the relay member A sends on; watch the devp2p session.
	relayID, path, err := apps[0].activeRelay(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := peers[0].Network
	t.Logf("killing %s (pid %d), %s's active relay (path %s)", relayID, relays[relayID].cmd.Process.Pid, apps[0].member, path)
	killed := time.Now()
	relays[relayID].cmd.Process.Signal(syscall.SIGKILL)
	<-relays[relayID].done
	var absentFrom, absentTo time.Time
	sameConn := true
	for time.Since(killed) < 15*time.Second {
		p, err := nodes[0].ethPeer(ctx, nodes[1].key.nodeID())
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
		t.Logf("relay kill: the devp2p session survived (same connection %s↔%s, peer never absent during 15 s of 100 ms polls)", before.LocalAddress, before.RemoteAddress)
	case !absentFrom.IsZero() && absentTo.IsZero():
		t.Fatalf("relay kill: geth-a lost its peer %v after the kill and had not reconnected after 15 s\n%s\n%s", absentFrom.Sub(killed), nodes[0].proc.tail(), apps[0].proc.tail())
	default:
		t.Logf("relay kill: the devp2p session was replaced (peer absent from %v to %v after the kill, same connection %v)", absentFrom.Sub(killed), absentTo.Sub(killed), sameConn)
	}
	newRelay, newPath, err := apps[0].activeRelay(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s now sends on %s (path %s)", apps[0].member, newRelay, newPath)
	sendAndSeeAtB("transaction after the relay kill")

	for _, a := range apps {
		if !a.proc.running() {
			t.Fatalf("%s exited: %v\n%s", a.member, a.proc.err, a.proc.tail())
		}
	}
}

package consortium_test

// Stock Hyperledger Fabric 2.5.16 peers and tools against a memberd demo
// consortium, with the certificates 'memberd demo init' issues and a peer
// identity made with 'memberd hsm csr --ou peer' and 'memberd ca sign', as
// docs/fabric-peers.md tells a member to do.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
)

// TestStockPeerTLS: stock peers join the demo channel with 'peer channel
// join -b genesis.block' and commit every block, one pulling from the raft
// leader and one from a follower, over TLS.
func TestStockPeerTLS(t *testing.T) { testStockPeer(t, false) }

// TestStockPeerMutualTLS: the same with ledger.mutual_tls on every member
// and peer.tls.clientAuthRequired on the peers (client certificates both
// ways).
func TestStockPeerMutualTLS(t *testing.T) { testStockPeer(t, true) }

// Peer log lines that mean a block was refused (retried forever, never
// committed) or the connection was cut for pinging.
var peerRefusals = []string{"could not be verified", "implicit policy evaluation failed",
	"does not have an OU that resolves", "too_many_pings", "certificate relies on legacy Common Name", "doesn't contain any IP SANs"}

func testStockPeer(t *testing.T, mutual bool) {
	if testing.Short() {
		t.Skip("runs stock Fabric peer processes for ~15s (the full pass of make test runs it; the -race -short pass skips it)")
	}
	fab := testenv.Fabric(t, "peer", "configtxlator")
	began := time.Now()
	L := initConsortium(t, 3, 1)
	if mutual {
		for _, m := range L.Members {
			editMemberConfig(t, L, m, func(c map[string]any) { c["ledger"].(map[string]any)["mutual_tls"] = true })
		}
	}
	d := start(t, L, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	a := L.Members[0]
	leader := statusOf(t, d, a).Leader
	follower := ""
	for _, m := range L.Members {
		if m != leader {
			follower = m
			break
		}
	}
	if leader == "" || follower == "" {
		t.Fatalf("leader %q follower %q", leader, follower)
	}
	// Blocks before the peers join (they catch up) and after (they follow).
	submit := func(n int) {
		t.Helper()
		if _, err := d.LedgerSubmit(ctx, a, n); err != nil {
			t.Fatal(err)
		}
	}
	submit(3)
	submit(2)

	peers := map[string]*stockPeer{}
	for i, target := range []string{leader, follower} {
		p := newStockPeer(t, fab, L, d, a, fmt.Sprintf("peer%d", i), target, mutual)
		p.start(t)
		p.join(t, ctx)
		peers[target] = p
	}
	joined := time.Now()
	submit(4)
	submit(1)
	want, err := d.LedgerHeight(leader)
	if err != nil {
		t.Fatal(err)
	}
	if !mutual {
		// The peers ping their deliver streams every 10s: gRPC's default
		// server enforcement cuts a stream after the third such ping
		// (GOAWAY too_many_pings), orderer.KeepaliveMinInterval must not.
		time.Sleep(35*time.Second - time.Since(joined))
	}
	for target, p := range peers {
		h := p.waitHeight(t, ctx, want)
		log := p.log(t)
		for _, bad := range peerRefusals {
			if strings.Contains(log, bad) {
				t.Errorf("peer pulling from %s logged %q:\n%s", target, bad, grepLines(log, bad))
			}
		}
		committed := len(regexp.MustCompile(`Committed block \[\d+\]`).FindAllString(log, -1))
		pulled := regexp.MustCompile(`orderer-address=(\S+)`).FindAllStringSubmatch(log, -1)
		for _, m := range pulled {
			if m[1] != d.LedgerAddr(target) {
				t.Errorf("peer for %s pulled from %s, not from %s", target, m[1], d.LedgerAddr(target))
			}
		}
		if committed != int(want) || len(pulled) == 0 {
			t.Errorf("peer pulling from %s: %d blocks committed (want %d, 0 refused), %d deliver connections", target, committed, want, len(pulled))
		}
		t.Logf("stock peer pulling from %s (%s, mutual TLS %v): height %d, %d blocks committed, 0 refused", target,
			map[bool]string{true: "leader", false: "follower"}[target == leader], mutual, h, committed)
	}

	// Every block: memberd ledger fetch == peer channel fetch, byte for
	// byte, and configtxlator decodes it.
	p := peers[follower]
	mdir := filepath.Join(L.Dir, "members", a)
	fetched := t.TempDir()
	args := []string{"ledger", "fetch", "--from", "0", "--to", strconv.FormatUint(want-1, 10), "--out", fetched, "--orderer", d.LedgerAddr(follower),
		"--channel", "demo", "--key", "file:" + filepath.Join(mdir, "client", "msp", "keystore", "key.pem"), "--insecure-file-key",
		"--cert", filepath.Join(mdir, "client", "msp", "signcerts", "cert.pem"), "--msp-id", a + "MSP",
		"--tls-ca", filepath.Join(L.Dir, "members", follower, "ca.pem"), "--policy", filepath.Join(L.Dir, "genesis.yaml")}
	if mutual {
		args = append(args, "--tls-cert", filepath.Join(mdir, "client", "msp", "signcerts", "cert.pem"),
			"--tls-key", "file:"+filepath.Join(mdir, "client", "msp", "keystore", "key.pem"))
	}
	if code, _, errb := runMemberd(t, args...); code != 0 {
		t.Fatalf("memberd ledger fetch: exit %d: %s", code, errb)
	}
	for n := uint64(0); n < want; n++ {
		ours, err := os.ReadFile(filepath.Join(fetched, fmt.Sprintf("%d.block", n)))
		if err != nil {
			t.Fatal(err)
		}
		theirs := filepath.Join(p.dir, fmt.Sprintf("fetched-%d.block", n))
		fetchArgs := []string{"channel", "fetch", strconv.FormatUint(n, 10), theirs, "-c", "demo", "-o", d.LedgerAddr(follower),
			"--tls", "--cafile", filepath.Join(L.Dir, "members", follower, "ca.pem")}
		if mutual {
			fetchArgs = append(fetchArgs, "--clientauth", "--certfile", p.tlsCert, "--keyfile", p.tlsKey)
		}
		p.cli(t, ctx, p.clientEnv(), fetchArgs...)
		tb, err := os.ReadFile(theirs)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours, tb) {
			t.Errorf("block %d: peer channel fetch (%d bytes) differs from memberd ledger fetch (%d bytes)", n, len(tb), len(ours))
		}
		cmd := exec.CommandContext(ctx, filepath.Join(fab, "bin", "configtxlator"), "proto_decode", "--type", "common.Block", "--input", theirs)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("configtxlator proto_decode block %d: %v: %s", n, err, lastLines(string(o), 3))
		}
	}
	t.Logf("%d blocks: peer channel fetch == memberd ledger fetch, configtxlator decodes all; %s in all", want, time.Since(began).Round(time.Second))
}

// stockPeer is one stock 'peer node start' of member with its own MSP
// folder, pulling blocks from target's ledger only (address overrides map
// every other orderer endpoint of the channel to target's).
type stockPeer struct {
	fab, dir, member, target string
	L                        *demo.Layout
	addr                     string
	tlsCert, tlsKey, ca      string
	env                      []string
	mutual                   bool
	cmd                      *exec.Cmd
	logFile                  string
	// channel is the channel the peer joins and follows; "" = the demo's
	// single channel.
	channel string
}

// channelName is the peer's channel.
func (p *stockPeer) channelName() string {
	if p.channel == "" {
		return "demo"
	}
	return p.channel
}

func newStockPeer(t *testing.T, fab string, L *demo.Layout, d *demo.Consortium, member, name, target string, mutual bool) *stockPeer {
	t.Helper()
	dir := t.TempDir()
	p := &stockPeer{fab: fab, dir: dir, member: member, target: target, L: L, mutual: mutual, logFile: filepath.Join(dir, "peer.log")}
	mdir := filepath.Join(L.Dir, "members", member)
	msp := filepath.Join(dir, "msp")
	for _, sub := range []string{"signcerts", "keystore", "cacerts", "tlscacerts"} {
		if err := os.MkdirAll(filepath.Join(msp, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The peer's identity, as docs/fabric-peers.md makes it: a key file
	// (the stock peer has no PKCS#11), 'memberd hsm csr --ou peer' with a
	// SAN for its address, 'memberd ca sign' by the member CA.
	p.addr, _ = freePort(t)
	key := filepath.Join(msp, "keystore", "key.pem")
	if out, err := exec.Command(testenv.Command(t, "openssl", "openssl"), "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key).CombinedOutput(); err != nil {
		t.Fatalf("openssl ecparam: %v %s", err, out)
	}
	memberd(t, "hsm", "csr", "--key", "file:"+key, "--insecure-file-key", "--cn", name+"."+member, "--org", member,
		"--ou", "peer", "--ip", "127.0.0.1", "--dns", "localhost", "--out", filepath.Join(dir, "peer.csr"))
	cert := filepath.Join(msp, "signcerts", "cert.pem")
	memberd(t, "ca", "sign", "--key", "file:"+filepath.Join(mdir, "ca-key.pem"), "--insecure-file-key",
		"--ca-cert", filepath.Join(mdir, "ca.pem"), "--csr", filepath.Join(dir, "peer.csr"), "--out", cert)
	p.ca = filepath.Join(mdir, "ca.pem")
	copyFile(t, p.ca, filepath.Join(msp, "cacerts", "ca.pem"))
	copyFile(t, p.ca, filepath.Join(msp, "tlscacerts", "ca.pem"))
	copyFile(t, filepath.Join(mdir, "admin", "msp", "config.yaml"), filepath.Join(msp, "config.yaml"))
	p.tlsCert, p.tlsKey = cert, key

	cfg := filepath.Join(dir, "config")
	if err := os.CopyFS(cfg, os.DirFS(filepath.Join(fab, "config"))); err != nil {
		t.Fatal(err)
	}
	_, cc := freePort(t)
	_, ops := freePort(t)
	p.env = append(os.Environ(),
		"FABRIC_CFG_PATH="+cfg, "FABRIC_LOGGING_SPEC=info", "CORE_PEER_ID="+name+"."+member, "CORE_PEER_LOCALMSPID="+member+"MSP",
		"CORE_PEER_MSPCONFIGPATH="+msp, "CORE_PEER_ADDRESS="+p.addr, "CORE_PEER_LISTENADDRESS="+p.addr,
		"CORE_PEER_CHAINCODELISTENADDRESS=127.0.0.1:"+cc, "CORE_OPERATIONS_LISTENADDRESS=127.0.0.1:"+ops,
		"CORE_PEER_GOSSIP_BOOTSTRAP="+p.addr, "CORE_PEER_GOSSIP_EXTERNALENDPOINT="+p.addr,
		"CORE_PEER_FILESYSTEMPATH="+filepath.Join(dir, "data"), "CORE_METRICS_PROVIDER=disabled",
		"CORE_PEER_TLS_ENABLED=true", "CORE_PEER_TLS_CERT_FILE="+cert, "CORE_PEER_TLS_KEY_FILE="+key,
		"CORE_PEER_TLS_ROOTCERT_FILE="+p.ca, "CORE_PEER_TLS_CLIENTCERT_FILE="+cert, "CORE_PEER_TLS_CLIENTKEY_FILE="+key,
		"CORE_PEER_TLS_CLIENTAUTHREQUIRED="+strconv.FormatBool(mutual), "CORE_PEER_TLS_CLIENTROOTCAS_FILES="+p.ca,
		// A ping every 10s (Fabric's default is 60s): memberd must not cut
		// the deliver stream for it (orderer.KeepaliveMinInterval).
		"CORE_PEER_KEEPALIVE_DELIVERYCLIENT_INTERVAL=10s")
	p.setTarget(d, target)
	return p
}

// setTarget points the peer's deliver client at target's ledger (from the
// next start): address overrides map every other member's orderer
// endpoint to target's.
func (p *stockPeer) setTarget(d *demo.Consortium, target string) {
	var overrides []string
	for _, m := range p.L.Members {
		if m != target {
			overrides = append(overrides, fmt.Sprintf(`{from: "%s", to: "%s", caCertsFile: "%s"}`,
				d.LedgerAddr(m), d.LedgerAddr(target), filepath.Join(p.L.Dir, "members", target, "ca.pem")))
		}
	}
	const key = "CORE_PEER_DELIVERYCLIENT_ADDRESSOVERRIDES="
	p.env = slices.DeleteFunc(p.env, func(e string) bool { return strings.HasPrefix(e, key) })
	p.env = append(p.env, key+"["+strings.Join(overrides, ", ")+"]")
	p.target = target
}

// retarget restarts the peer (its ledger kept) pulling from target's ledger.
func (p *stockPeer) retarget(t *testing.T, d *demo.Consortium, target string) {
	t.Helper()
	p.cmd.Process.Kill() // the process this test started, by its handle
	p.cmd.Wait()
	p.setTarget(d, target)
	p.start(t)
}

// clientEnv is the peer CLI's environment as the member's admin.
func (p *stockPeer) clientEnv() []string {
	return append(append([]string{}, p.env...), "CORE_PEER_MSPCONFIGPATH="+filepath.Join(p.L.Dir, "members", p.member, "admin", "msp"))
}

func (p *stockPeer) start(t *testing.T) {
	t.Helper()
	// Appended: a restarted peer's log follows its earlier runs'.
	f, err := os.OpenFile(p.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(filepath.Join(p.fab, "bin", "peer"), "node", "start")
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = p.env, f, f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	pid := p.cmd.Process.Pid
	t.Cleanup(func() {
		p.cmd.Process.Kill() // the process this test started, by its handle
		p.cmd.Wait()
		f.Close()
		// MEMBERD_TEST_PEER_LOGS=DIR keeps a copy of every stock peer log.
		if dir := os.Getenv("MEMBERD_TEST_PEER_LOGS"); dir != "" {
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("peer-%s-%d.log", p.member, pid)), []byte(p.log(t)), 0o644)
		}
		if t.Failed() {
			t.Logf("peer %d log (last lines):\n%s", pid, lastLines(p.log(t), 40))
		}
	})
	waitFor(t, 20*time.Second, "the peer to listen on "+p.addr, func() bool {
		c, err := dialTCP(p.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (p *stockPeer) join(t *testing.T, ctx context.Context) {
	t.Helper()
	genesis := demo.LedgerGenesisFile
	if p.channel != "" {
		genesis = demo.LedgerChannelGenesisFile(p.channel)
	}
	p.cli(t, ctx, p.clientEnv(), "channel", "join", "-b", filepath.Join(p.L.Dir, "members", p.member, genesis))
}

// cli runs the peer CLI and fails the test if it fails.
func (p *stockPeer) cli(t *testing.T, ctx context.Context, env []string, args ...string) string {
	t.Helper()
	out, err := p.try(ctx, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// try runs the peer CLI (at most 30s).
func (p *stockPeer) try(ctx context.Context, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.fab, "bin", "peer"), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("peer %s: %v\n%s", strings.Join(args, " "), err, lastLines(string(out), 10))
	}
	return string(out), nil
}

var heightRe = regexp.MustCompile(`"height":(\d+)`)

// waitHeight polls 'peer channel getinfo' until the peer's ledger holds
// want blocks.
func (p *stockPeer) waitHeight(t *testing.T, ctx context.Context, want uint64) uint64 {
	t.Helper()
	var h uint64
	waitFor(t, 30*time.Second, fmt.Sprintf("the peer pulling from %s to commit %d blocks", p.target, want), func() bool {
		out, err := p.try(ctx, p.clientEnv(), "channel", "getinfo", "-c", p.channelName())
		if err != nil {
			t.Log(err)
			return false
		}
		m := heightRe.FindStringSubmatch(out)
		if m != nil {
			h, _ = strconv.ParseUint(m[1], 10, 64)
		}
		return h >= want
	})
	return h
}

func (p *stockPeer) log(t *testing.T) string {
	b, err := os.ReadFile(p.logFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return lastLines(strings.Join(out, "\n"), 5)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

func writeKey(t *testing.T, path string, k *ecdsa.PrivateKey) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeCert(t *testing.T, path string, c *x509.Certificate) {
	if err := os.WriteFile(path, hsm.EncodePEM("CERTIFICATE", c.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLedgerCommands: channel create from a policy, a node started from that
// genesis block (TLS with the node identity), then submit, height and fetch
// (with verification) through the CLI.
func TestLedgerCommands(t *testing.T) {
	dir := t.TempDir()
	cons := policytest.New(t, 1)
	pol := cons.Genesis(t)
	polFile := filepath.Join(dir, "policy.yaml")
	os.WriteFile(polFile, pol.Marshal(), 0o644)
	ca := cons.CAs["m1"]
	node := ca.Issue(t, "node1", testpki.OU("orderer"))
	writeCert(t, filepath.Join(dir, "node.pem"), node.Cert)
	writeCert(t, filepath.Join(dir, "ca.pem"), ca.Cert)
	client := ca.Issue(t, "client1")
	writeCert(t, filepath.Join(dir, "client.pem"), client.Cert)
	writeKey(t, filepath.Join(dir, "client.key"), client.ECDSA(t))

	gen := filepath.Join(dir, "genesis.block")
	if code, _, errs := run(t, "ledger", "channel", "create", "--policy", polFile, "--out", gen); code != ExitUsage || !strings.Contains(errs, "m1") {
		t.Fatalf("create without --consenter: exit %d %s", code, errs)
	}
	if code, _, errs := run(t, "ledger", "channel", "create", "--policy", polFile,
		"--consenter", "m1="+filepath.Join(dir, "node.pem")+"@127.0.0.1:7050", "--out", gen); code != ExitOK || !strings.Contains(errs, "members m1 have no ledger_endpoints") {
		t.Fatalf("channel create (policy without ledger_endpoints: a warning): exit %d %s", code, errs)
	}
	raw, _ := os.ReadFile(gen)
	genesis, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}

	// The node.
	rl, _ := net.Listen("tcp", "127.0.0.1:0")
	gl, _ := net.Listen("tcp", "127.0.0.1:0")
	id := orderer.Identity{MSPID: "m1MSP", Cert: node.Cert, Signer: node.Key}
	n, err := orderer.New(orderer.Config{
		Raft: raftlog.Config{ID: 1, Peers: []raftlog.Peer{{ID: 1, Addr: rl.Addr().String()}}, Dir: filepath.Join(dir, "raft"),
			Dialer: &net.Dialer{}, Listener: rl, TickInterval: 10 * time.Millisecond},
		BlockDir: filepath.Join(dir, "blocks"), Genesis: genesis,
		Batch:  block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond},
		Signer: node.Key, Identity: id.Serialized(), Policy: func() *policy.Policy { return pol }})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := orderer.NewServer(orderer.ServerConfig{Lookup: func(string) *orderer.Node { return n }})
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(orderer.ServerTLS(orderer.TLSCertificate(id), func() *policy.Policy { return pol }, true))))
	srv.Register(gs)
	go gs.Serve(gl)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { gs.Stop(); cancel(); <-done; n.Close() }()
	for !n.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}

	common := []string{"--orderer", gl.Addr().String(), "--channel", pol.Ledger().Channel,
		"--key", "file:" + filepath.Join(dir, "client.key"), "--insecure-file-key",
		"--cert", filepath.Join(dir, "client.pem"), "--msp-id", "m1MSP",
		"--tls-ca", filepath.Join(dir, "ca.pem"), "--tls-cert", filepath.Join(dir, "client.pem"),
		"--tls-key", "file:" + filepath.Join(dir, "client.key")}
	for i := range 3 {
		code, out, errs := run(t, append([]string{"ledger", "submit", "--data", "hello " + string(rune('a'+i))}, common...)...)
		if code != ExitOK || !strings.HasPrefix(out, "SUCCESS ") {
			t.Fatalf("submit: exit %d out %q err %q", code, out, errs)
		}
	}
	code, out, errs := run(t, append([]string{"ledger", "height"}, common...)...)
	if code != ExitOK || strings.TrimSpace(out) != "4" {
		t.Fatalf("height: exit %d out %q err %q", code, out, errs)
	}
	outDir := filepath.Join(dir, "fetched")
	code, out, errs = run(t, append([]string{"ledger", "fetch", "--from", "0", "--out", outDir, "--policy", polFile}, common...)...)
	if code != ExitOK || !strings.Contains(out, "blocks 0..3 (4)") {
		t.Fatalf("fetch: exit %d out %q err %q", code, out, errs)
	}
	for i := range 4 {
		if _, err := os.Stat(filepath.Join(outDir, []string{"0", "1", "2", "3"}[i]+".block")); err != nil {
			t.Fatal(err)
		}
	}
	// The node requires mutual TLS: without --tls-cert/--tls-key the CLI
	// presents the identity (--cert, --key).
	identityOnly := common[:len(common)-4]
	if code, out, errs := run(t, append([]string{"ledger", "height"}, identityOnly...)...); code != ExitOK || strings.TrimSpace(out) != "4" {
		t.Fatalf("height with mutual TLS from --cert/--key: exit %d out %q err %q", code, out, errs)
	}
	// submit writes a Fabric transaction whose data reads back.
	raw1, _ := os.ReadFile(filepath.Join(outDir, "1.block"))
	b1, err := block.Unmarshal(raw1)
	if err != nil {
		t.Fatal(err)
	}
	env1, err := block.ParseEnvelope(b1.Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	if data, err := orderer.TransactionData(env1.Data); err != nil || string(data) != "hello a" {
		t.Fatalf("block 1 transaction data %q, %v", data, err)
	}
	// The same with the identity's key in an HSM (SoftHSM2), as in production.
	tok := hsmtest.NewToken(t, "ledger-client")
	key := tok.NewKey(t, "client")
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: "hsm-client"}})
	if err != nil {
		t.Fatal(err)
	}
	hsmCert, err := hsm.SignCSR(ca.Cert, ca.Key, csr, hsm.LeafConfig{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	writeCert(t, filepath.Join(dir, "hsm-client.pem"), hsmCert)
	hsmArgs := []string{"ledger", "submit", "--data", "signed in the HSM", "--orderer", gl.Addr().String(),
		"--channel", pol.Ledger().Channel, "--key", tok.KeyURI("client"), "--cert", filepath.Join(dir, "hsm-client.pem"),
		"--msp-id", "m1MSP", "--tls-ca", filepath.Join(dir, "ca.pem")}
	if code, out, errs := run(t, append(hsmArgs, "--tls-key", tok.KeyURI("client"))...); code != ExitOK || !strings.HasPrefix(out, "SUCCESS ") {
		t.Fatalf("submit with an HSM key: exit %d out %q err %q", code, out, errs)
	}
	if code, out, errs := run(t, hsmArgs...); code != ExitOK || !strings.HasPrefix(out, "SUCCESS ") {
		t.Fatalf("submit with an HSM key, mutual TLS from --cert/--key: exit %d out %q err %q", code, out, errs)
	}

	// Usage errors exit 2.
	if code, _, _ := run(t, "ledger", "submit", "--data", "x"); code != ExitUsage {
		t.Fatalf("submit without identity: exit %d", code)
	}
	if code, _, _ := run(t, append([]string{"ledger", "fetch", "--out", outDir}, common...)...); code != ExitUsage {
		t.Fatalf("fetch without --from: exit %d", code)
	}
	// A refused submission exits 1 and prints the status.
	other := append([]string{}, common...)
	other[3] = "no-such-channel"
	if code, out, _ := run(t, append([]string{"ledger", "submit", "--data", "x"}, other...)...); code != ExitRuntime || !strings.HasPrefix(out, "NOT_FOUND") {
		t.Fatalf("submit to an unknown channel: exit %d out %q", code, out)
	}
}

// TestLedgerChannelCreateChannels: with ledger.channels, 'ledger channel
// create' asks for --channel, builds the named channel's genesis block
// (its member orgs and consenters only), and refuses a channel the policy
// lacks.
func TestLedgerChannelCreateChannels(t *testing.T) {
	dir := t.TempDir()
	cons := policytest.New(t, 3)
	pol := policytest.MustParse(t, cons.NextDocument(t, cons.Genesis(t), func(d *policy.Document) {
		d.Ledger.Channel = ""
		d.Ledger.Channels = []*policy.Channel{
			{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}},
			{Name: "beta", Consenters: []string{"m2"}, Members: []string{"m2", "m3"}},
		}
	}))
	polFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(polFile, pol.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	var consenters []string
	for _, m := range policytest.Members(3) {
		f := filepath.Join(dir, m+".pem")
		writeCert(t, f, cons.CAs[m].Issue(t, m+" node").Cert)
		consenters = append(consenters, "--consenter", m+"="+f)
	}
	gen := filepath.Join(dir, "beta.block")
	args := append([]string{"ledger", "channel", "create", "--policy", polFile, "--out", gen}, consenters...)
	if code, _, errs := run(t, args...); code != ExitUsage || !strings.Contains(errs, "lists ledger.channels (alpha, beta): say which with --channel") {
		t.Fatalf("create without --channel: exit %d %s", code, errs)
	}
	if code, _, errs := run(t, append(args, "--channel", "gamma")...); code != ExitUsage || !strings.Contains(errs, `no channel "gamma"`) {
		t.Fatalf("create --channel gamma: exit %d %s", code, errs)
	}
	code, _, errs := run(t, append(args, "--channel", "beta")...)
	if code != ExitOK || !strings.Contains(errs, `channel "beta": genesis block with 2 member orgs and 1 consenters`) {
		t.Fatalf("create --channel beta: exit %d %s", code, errs)
	}
	raw, err := os.ReadFile(gen)
	if err != nil {
		t.Fatal(err)
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	beta, _ := pol.ForChannel("beta")
	if got, err := orderer.GenesisConsenters(beta, b); err != nil || !slices.Equal(got, []string{"m2"}) {
		t.Fatalf("beta's genesis consenters %v, %v", got, err)
	}
}

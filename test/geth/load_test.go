package geth_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/benchload"
	"github.com/memberd/memberd/node/orderer"
)

// ledgerClient is a Broadcast client of member i's ledger node, signing
// as the demo's client identity of that member (members/<id>/client/msp).
func (s *scenario) ledgerClient(i int) (ab.AtomicBroadcastClient, orderer.Identity, string) {
	t := s.t
	t.Helper()
	member := s.apps[i].member
	raw, err := os.ReadFile(s.apps[i].config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Ledger struct {
			Listen string `yaml:"listen"`
		} `yaml:"ledger"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil || cfg.Ledger.Listen == "" {
		t.Fatalf("%s: no ledger.listen (%v)", s.apps[i].config, err)
	}
	msp := filepath.Join(s.demo, "members", member, "client", "msp")
	pemCert, err := os.ReadFile(filepath.Join(msp, "signcerts", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := hsm.ParseCertificatesPEM(pemCert)
	if err != nil || len(certs) == 0 {
		t.Fatalf("%s: no certificate (%v)", msp, err)
	}
	key, err := hsm.OpenSoftSigner(filepath.Join(msp, "keystore", "key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard}) // the demo's client key is a file
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	pol := demoPolicy(t, s.demo)
	id := orderer.Identity{MSPID: pol.Member(member).MSPID, Cert: certs[0], Signer: key}
	tc := orderer.TLSCertificate(id)
	conn, err := grpc.NewClient(cfg.Ledger.Listen, append(orderer.ClientOptions(),
		grpc.WithTransportCredentials(credentials.NewTLS(orderer.ClientTLS(&tc, pol.CAPool()))))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ab.NewAtomicBroadcastClient(conn), id, pol.Ledger().Channel
}

// poolSize is the number of transactions in the node's txpool (pending
// and queued).
func (n *gethNode) poolSize(ctx context.Context) (int, error) {
	var st struct{ Pending, Queued string }
	if err := n.call(ctx, false, &st, "txpool_status"); err != nil {
		return 0, err
	}
	p, err1 := strconv.ParseUint(st.Pending, 0, 64)
	q, err2 := strconv.ParseUint(st.Queued, 0, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s txpool_status: %+v", n.name, st)
	}
	return int(p + q), nil
}

// TestGethLoadKeepsRaftLeader: while the ledger orders a paced Broadcast
// load, a few hundred signed EVM transactions sent to A's geth gossip
// through the tunnel into B's pool; the ledger's raft must keep its leader
// and term on both appliances (no election: leader changes = 0), and every
// envelope must be ordered.
func TestGethLoadKeepsRaftLeader(t *testing.T) {
	const (
		evmTxs    = 400 // in bursts of evmBurst, one a second: 8 s of the 10 s load
		evmBurst  = 50
		envelopes = 2000
		rate      = 200 // envelopes/s: a 10 s Broadcast load
		envBytes  = 1024
	)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	s := setup(ctx, t, layout{})
	client, id, channel := s.ledgerClient(0)
	envs := make([]*common.Envelope, envelopes)
	for i := range envs {
		data := fmt.Appendf(nil, "geth load %d %0*d", i, envBytes, 0)[:envBytes]
		var err error
		if envs[i], _, err = orderer.NewTransaction(id, channel, data, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	raws := make([]string, evmTxs)
	for i := range raws {
		to := make([]byte, 20)
		to[18], to[19] = byte(i>>8), byte(i)
		raw, _, err := signTx(s.wallet, legacyTx{Nonce: s.nonce, GasPrice: big.NewInt(10e9), Gas: 21000, To: to, Value: big.NewInt(1e12)}, chainID)
		if err != nil {
			t.Fatal(err)
		}
		s.nonce++
		raws[i] = "0x" + hex.EncodeToString(raw)
	}
	pool0, err := s.nodes[1].poolSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raft := s.raftViews()
	t.Logf("ledger raft before: %v", raft)

	loaded := make(chan benchload.Result, 1)
	go func() { loaded <- benchload.Run(client, envs, 4, rate, 0) }()
	time.Sleep(2 * time.Second) // the ledger is under load when the EVM traffic starts
	sent := time.Now()
	for i, raw := range raws {
		if i > 0 && i%evmBurst == 0 {
			time.Sleep(time.Until(sent.Add(time.Duration(i/evmBurst) * time.Second)))
		}
		if err := s.nodes[0].call(ctx, false, nil, "eth_sendRawTransaction", raw); err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
	}
	sendTook := time.Since(sent)
	var inPool int
	err = eventually(ctx, 60*time.Second, 50*time.Millisecond, func() error {
		n, err := s.nodes[1].poolSize(ctx)
		if err == nil && n-pool0 < evmTxs {
			err = fmt.Errorf("geth-b's txpool has %d of the %d transactions", n-pool0, evmTxs)
		}
		inPool = n - pool0
		return err
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.nodes[1].proc.tail())
	}
	gossip := time.Since(sent)
	res := <-loaded
	after := s.raftViews()
	t.Logf("EVM: %d transactions sent to geth-a in bursts of %d over %v, all %d in geth-b's txpool %v after the first was sent (%v after the last)",
		evmTxs, evmBurst, sendTook.Round(time.Millisecond), inPool, gossip.Round(time.Millisecond), (gossip - sendTook).Round(time.Millisecond))
	t.Logf("ledger: %d of %d envelopes (%d B) answered SUCCESS in %v at %d/s offered, latency p50 %v p99 %v; other answers %v",
		res.OK, envelopes, envBytes, res.Elapsed.Round(time.Millisecond), rate,
		benchload.Percentile(res.Lat, 0.5).Round(time.Millisecond), benchload.Percentile(res.Lat, 0.99).Round(time.Millisecond), res.Other)
	t.Logf("ledger raft after: %v", after)
	if res.OK != envelopes {
		t.Errorf("the ledger answered SUCCESS to %d of %d envelopes (other answers %v)", res.OK, envelopes, res.Other)
	}
	if after != raft {
		t.Errorf("the ledger's raft changed leader or term under EVM traffic: before %v, after %v", raft, after)
	}
	s.checkAppliancesRunning(raft)
}

package orderer

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

func readVector(t *testing.T, name string) *common.Block {
	t.Helper()
	raw, err := os.ReadFile("../testdata/fabric-2.5.16/" + name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFabricCompatibility: a node joins the channel from a genesis block made
// by Fabric 2.5.16's configtxgen, admits the real ENDORSER_TRANSACTION
// envelopes a Fabric client wrote (Org1 is a member of the policy through its
// CA), orders them byte for byte, and Deliver serves the Fabric genesis block
// unchanged.
func TestFabricCompatibility(t *testing.T) {
	gen := readVector(t, "vectors-0.block")
	ch, err := channelconfig.Parse(gen)
	if err != nil {
		t.Fatal(err)
	}
	var org1CA []byte
	for _, o := range ch.Config.ApplicationOrgs {
		if o.MSPID == "Org1MSP" {
			org1CA = o.RootCerts[0]
		}
	}
	if org1CA == nil {
		t.Fatal("no Org1MSP in the Fabric genesis block")
	}
	cons := policytest.New(t, 2)
	cons.Template.Members[0].MSPID = "Org1MSP"
	cons.Template.Members[0].CACerts = string(org1CA)
	pol := cons.Genesis(t)
	nodeCA := testpki.NewCA(t, "node-ca")
	n1 := nodeCA.Issue(t, "n1")
	id := Identity{MSPID: "Org1MSP", Cert: n1.Cert, Signer: n1.Key}

	// The stock channel config's BlockValidation wants an OrdererMSP
	// signer (cryptogen's CA, whose key is not here): a node refuses to
	// start with a certificate from another CA, as peers would refuse its
	// blocks. The rest of the test replays the channel without that check.
	dir := t.TempDir()
	// FixedBatches: cut as Fabric did (10 envelopes, MaxMessageCount), so
	// that block 1 holds the same envelopes as Fabric's; adaptive cutting
	// would cut the first envelope alone at once.
	cfg := Config{Raft: raftLocal(t, dir), BlockDir: dir + "/blocks", Genesis: gen, FixedBatches: true,
		Signer: n1.Key, Identity: id.Serialized(), Policy: func() *policy.Policy { return pol }}
	if _, err := New(cfg); !errors.Is(err, ErrSigner) || !strings.Contains(err.Error(), `no organisation with MSP id "Org1MSP"`) &&
		!strings.Contains(err.Error(), "does not chain to a CA of MSP Org1MSP") {
		t.Fatalf("New with a signer outside the orderer orgs: %v, want ErrSigner", err)
	}
	dir = t.TempDir()
	cfg.Raft, cfg.BlockDir, cfg.skipSignerCheck = raftLocal(t, dir), dir+"/blocks", true
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n.ChannelID() != "vectors" || n.BatchConfig().MaxMessageCount != 10 || n.BatchConfig().BatchTimeout != 2*time.Second {
		t.Fatalf("channel %q batch %+v: not read from the Fabric genesis block", n.ChannelID(), n.BatchConfig())
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(t.Context()) }()
	t.Cleanup(func() { n.Close(); <-done })
	for !n.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	fabric := readVector(t, "vectors-1.block")
	var pend []*Pending
	for i, raw := range fabric.Data.Data {
		p, err := n.Order(t.Context(), raw)
		if err != nil {
			t.Fatalf("real Fabric envelope %d refused: %v", i, err)
		}
		pend = append(pend, p)
	}
	for _, p := range pend {
		if err := p.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	// MaxMessageCount 10: one block, the same envelopes byte for byte, so the
	// same data hash as the block Fabric cut.
	b, err := n.Store().Get(1)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Header.DataHash, fabric.Header.DataHash) {
		t.Fatalf("data hash %x, Fabric's block has %x", b.Header.DataHash, fabric.Header.DataHash)
	}
	if !bytes.Equal(b.Header.PreviousHash, block.HeaderHash(gen.Header)) {
		t.Fatal("block 1 does not chain to the Fabric genesis block")
	}
	if err := block.VerifySignatures(b, block.VerifyCreatorSignature); err != nil {
		t.Fatal(err)
	}
	// The same envelope again is a duplicate.
	if _, err := n.Order(t.Context(), fabric.Data.Data[0]); StatusOf(err) != common.Status_BAD_REQUEST {
		t.Fatalf("resubmitted Fabric envelope: %v", err)
	}
	// Deliver serves Fabric's genesis block unchanged.
	srv, _ := NewServer(ServerConfig{Lookup: func(string) *Node { return n }})
	seek, _ := proto.Marshal(&ab.SeekInfo{Start: oldest, Stop: oldest})
	rl := cons.CAs["m2"].Issue(t, "reader")
	reader := Identity{MSPID: pol.Member("m2").MSPID, Cert: rl.Cert, Signer: rl.Key}
	var got []*common.Block
	deliver := func(id Identity) common.Status {
		got = nil
		env := envSpec{id: id, typ: common.HeaderType_DELIVER_SEEK_INFO, channel: "vectors", data: seek}.build(t)
		st, _ := srv.deliver(t.Context(), senderFunc(func(r *ab.DeliverResponse) error {
			got = append(got, r.GetBlock())
			return nil
		}), env)
		return st
	}
	if st := deliver(reader); st != common.Status_SUCCESS || len(got) != 1 || !proto.Equal(got[0], gen) {
		t.Fatalf("Deliver of the Fabric genesis block: %s, %d blocks, equal=%v", st, len(got), len(got) == 1 && proto.Equal(got[0], gen))
	}
	// The node's own certificate comes from a CA outside the policy.
	if st := deliver(id); st != common.Status_FORBIDDEN {
		t.Fatalf("non-member reader: %s", st)
	}
}

type senderFunc func(*ab.DeliverResponse) error

func (f senderFunc) Send(r *ab.DeliverResponse) error { return f(r) }

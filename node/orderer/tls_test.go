package orderer

import (
	"crypto/x509/pkix"
	"net"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/raftlog"
)

// TestMutualTLSWithHSMKey: a single-node channel whose blocks are signed by a
// SoftHSM2 key and whose gRPC server presents that key over mutual TLS;
// member clients submit and pull, non-members are refused at the handshake.
func TestMutualTLSWithHSMKey(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond})
	tok := hsmtest.NewToken(t, "orderer")
	signer := tok.NewKey(t, "node")
	csr, err := hsm.CreateCSR(signer, hsm.CSRRequest{Subject: pkix.Name{CommonName: "node1", OrganizationalUnit: []string{channelconfig.OrdererOU}}})
	if err != nil {
		t.Fatal(err)
	}
	ca := c.cons.CAs["m1"]
	cert, err := hsm.SignCSR(ca.Cert, ca.Key, csr, hsm.LeafConfig{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{MSPID: "m1MSP", Cert: cert, Signer: signer}
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Raft: raftLocal(t, dir), BlockDir: dir + "/blocks", Genesis: c.genesis,
		Signer: signer, Identity: id.Serialized(), Policy: c.policy})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := NewServer(ServerConfig{Lookup: func(string) *Node { return n }})
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(ServerTLS(TLSCertificate(id), c.policy, true))))
	srv.Register(gs)
	go gs.Serve(ln)
	done := make(chan error, 1)
	go func() { done <- n.Run(t.Context()) }()
	t.Cleanup(func() { gs.Stop(); n.Close(); <-done })

	client := c.identity(t, "m1", "client")
	cc := TLSCertificate(client)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(ClientTLS(&cc, c.pol.CAPool()))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	abc := ab.NewAtomicBroadcastClient(conn)
	for !n.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	env, _, _ := NewTransaction(client, "trade", []byte("over TLS"), time.Now())
	if st, info := broadcastOne(t, abc, env); st != common.Status_SUCCESS {
		t.Fatalf("%s %s", st, info)
	}
	var got *common.Block
	if err := Fetch(t.Context(), abc, client, "trade", SeekRange(1, 1, ab.SeekInfo_FAIL_IF_NOT_READY), func(b *common.Block) error { got = b; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := block.VerifySignatures(got, block.VerifyCreatorSignature); err != nil {
		t.Fatalf("block signed by the HSM key does not verify: %v", err)
	}

	// A client whose certificate no member CA issued fails the handshake.
	leaf := testpki.NewCA(t, "outsider").Issue(t, "outsider")
	bad := TLSCertificate(Identity{Cert: leaf.Cert, Signer: leaf.Key})
	conn2, _ := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(ClientTLS(&bad, c.pol.CAPool()))))
	defer conn2.Close()
	s, err := ab.NewAtomicBroadcastClient(conn2).Broadcast(t.Context())
	if err == nil {
		s.Send(env)
		_, err = s.Recv()
	}
	if err == nil {
		t.Fatal("non-member client was served")
	}
	t.Logf("outsider refused: %v", err)
}

// raftLocal is a one-node raft config on a loopback listener.
func raftLocal(t testing.TB, dir string) raftlog.Config {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return raftlog.Config{ID: 1, Peers: []raftlog.Peer{{ID: 1, Addr: ln.Addr().String()}}, Dir: dir + "/raft",
		Dialer: &net.Dialer{}, Listener: ln, TickInterval: 10 * time.Millisecond}
}

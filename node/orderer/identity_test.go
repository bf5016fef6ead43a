package orderer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
)

// TestSetIdentitySignsNextBlocks: after SetIdentity (an HSM identity
// rotation), a node signs the blocks it writes from then on with the new
// key and certificate; the blocks it wrote before keep the old signature,
// and the other nodes are unaffected.
func TestSetIdentitySignsNextBlocks(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, nil)
	cl.leader(10 * time.Second)
	client := cl.c.identity(t, "m1", "client1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	submit := func(n int) uint64 {
		t.Helper()
		envs, ids := envelopes(t, client, n, 100)
		res := newLoadResult()
		if _, err := broadcast(ctx, cl.nodes[cl.leader(time.Second)-1].client, envs, ids, res); err != nil {
			t.Fatal(err)
		}
		if len(res.success) != n {
			t.Fatalf("%d SUCCESS of %d: %v", len(res.success), n, res.other)
		}
		h := cl.node(cl.leader(time.Second)).Height()
		cl.waitHeight(h, 10*time.Second)
		return h
	}
	h1 := submit(20)

	n2 := cl.node(2)
	if err := n2.SetIdentity(nil, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("SetIdentity(nil) = %v, want ErrInvalidConfig", err)
	}
	oldID := cl.nodes[1].ident.Serialized()
	// An identity the channel config rejects is refused and changes nothing:
	// no OU (NodeOUs are on), another member's CA, a key that is not the
	// certificate's.
	noOU := cl.c.identity(t, "m2", "n2-no-ou")
	otherCA := cl.c.nodeIdentity(t, "m3", "n2-wrong-ca")
	otherCA.MSPID = noOU.MSPID
	for name, tc := range map[string]struct {
		id   Identity
		says string
	}{
		"no OU":       {noOU, "has no OU that resolves to client, peer, admin or orderer"},
		"other CA":    {otherCA, "does not chain to a CA of MSP m2MSP"},
		"foreign key": {Identity{MSPID: noOU.MSPID, Cert: cl.nodes[1].ident.Cert, Signer: noOU.Signer}, "not the key of certificate"},
	} {
		err := n2.SetIdentity(tc.id.Signer, tc.id.Serialized())
		if !errors.Is(err, ErrSigner) || !strings.Contains(err.Error(), tc.says) {
			t.Fatalf("SetIdentity(%s) = %v, want ErrSigner saying %q", name, err, tc.says)
		}
	}
	if !strings.Contains(fmt.Sprint(n2.SetIdentity(noOU.Signer, noOU.Serialized())), "memberd hsm csr") {
		t.Fatal("the refusal does not name the fix")
	}
	rotated := cl.c.nodeIdentity(t, "m2", "n2-rotated")
	if err := n2.SetIdentity(rotated.Signer, rotated.Serialized()); err != nil {
		t.Fatal(err)
	}
	h2 := submit(20)
	if h2 <= h1 {
		t.Fatalf("height %d after the second load, was %d", h2, h1)
	}
	creator := func(n *Node, num uint64) []byte {
		t.Helper()
		b, err := n.Store().Get(num)
		if err != nil {
			t.Fatal(err)
		}
		if err := block.VerifySignatures(b, block.VerifyCreatorSignature); err != nil {
			t.Fatalf("block %d: %v", num, err)
		}
		sds, _ := block.Signatures(b)
		return sds[0].Identity
	}
	if got := creator(n2, h1-1); !bytes.Equal(got, oldID) {
		t.Fatalf("block %d, written before SetIdentity, is not signed by the old identity", h1-1)
	}
	for num := h1; num < h2; num++ {
		if got := creator(n2, num); !bytes.Equal(got, rotated.Serialized()) {
			t.Fatalf("block %d, written after SetIdentity, is not signed by the new identity", num)
		}
		if got := creator(cl.node(1), num); !bytes.Equal(got, cl.nodes[0].ident.Serialized()) {
			t.Fatalf("node 1's block %d is not signed by node 1's own identity", num)
		}
	}
	cl.checkIdentical()
}

// TestNewRefusesRejectedSigner: a node does not start with a signing
// certificate its own channel config rejects (here: no OU=orderer while
// the config enables NodeOUs), and says how to fix it.
func TestNewRefusesRejectedSigner(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond})
	id := c.identity(t, "m1", "n1-no-ou")
	dir := t.TempDir()
	_, err := New(Config{Raft: raftLocal(t, dir), BlockDir: dir + "/blocks", Genesis: c.genesis,
		Signer: id.Signer, Identity: id.Serialized(), Policy: c.policy})
	if !errors.Is(err, ErrSigner) || !strings.Contains(err.Error(), "--ou orderer") {
		t.Fatalf("New = %v, want ErrSigner naming --ou orderer", err)
	}
	good := c.nodeIdentity(t, "m1", "n1")
	n, err := New(Config{Raft: raftLocal(t, dir), BlockDir: dir + "/blocks", Genesis: c.genesis,
		Signer: good.Signer, Identity: good.Serialized(), Policy: c.policy})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
}

// TestSignerOutageWaits: a follower's block-signing key is in a real
// SoftHSM2 token; the token folder goes away while blocks are ordered (the
// HSM unplugged) and comes back. The follower must wait for its key (not
// stop its node, as it did), then write the missed blocks, identical to
// the others.
func TestSignerOutageWaits(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, nil)
	leader := cl.leader(10 * time.Second)
	client := cl.c.identity(t, "m1", "client1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	submit := func(n int) uint64 {
		t.Helper()
		envs, ids := envelopes(t, client, n, 100)
		res := newLoadResult()
		if _, err := broadcast(ctx, cl.nodes[cl.leader(time.Second)-1].client, envs, ids, res); err != nil {
			t.Fatal(err)
		}
		if len(res.success) != n {
			t.Fatalf("%d SUCCESS of %d: %v", len(res.success), n, res.other)
		}
		return cl.node(cl.leader(time.Second)).Height()
	}
	f := uint64(1)
	if f == leader {
		f = 2
	}
	member := fmt.Sprintf("m%d", f)
	tok := hsmtest.NewToken(t, "node")
	signer := tok.NewKey(t, "sign")
	ca := cl.c.cons.CAs[member]
	cert := ca.Issue(t, "hsm-node", testpki.OU(channelconfig.OrdererOU), testpki.Key(signer)).Cert
	id := Identity{MSPID: cl.c.policy().Member(member).MSPID, Cert: cert, Signer: signer}
	n := cl.node(f)
	if err := n.SetIdentity(signer, id.Serialized()); err != nil {
		t.Fatal(err)
	}
	h1 := submit(20)
	cl.waitHeight(h1, 10*time.Second)

	tokens := filepath.Join(tok.Dir, "tokens")
	if err := os.Rename(tokens, tokens+".gone"); err != nil {
		t.Fatal(err)
	}
	back := false
	defer func() {
		if !back {
			os.Rename(tokens+".gone", tokens)
		}
	}()
	h2 := submit(20) // the other two order and write them
	time.Sleep(500 * time.Millisecond)
	if got := n.Height(); got >= h2 {
		t.Fatalf("node %d wrote height %d without its signing key", f, got)
	}
	select {
	case err := <-cl.nodes[f-1].runErr:
		t.Fatalf("node %d stopped while its key was gone: %v", f, err)
	default:
	}
	if err := os.Rename(tokens+".gone", tokens); err != nil {
		t.Fatal(err)
	}
	back = true
	t0 := time.Now()
	cl.waitHeight(h2, 20*time.Second)
	t.Logf("node %d at height %d %v after its token came back (it had %d of %d)", f, n.Height(), time.Since(t0).Round(time.Millisecond), h1, h2)
	h3 := submit(10)
	cl.waitHeight(h3, 10*time.Second)
	cl.checkIdentical()
	b, err := n.Store().Get(h2 - 1)
	if err != nil {
		t.Fatal(err)
	}
	sds, _ := block.Signatures(b)
	if len(sds) == 0 || !bytes.Equal(sds[0].Identity, id.Serialized()) {
		t.Fatalf("block %d of node %d is not signed by its HSM identity", h2-1, f)
	}
}

package orderer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/node/block"
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

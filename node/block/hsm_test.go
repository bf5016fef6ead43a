package block_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/pem"
	"os"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
)

// Blocks signed with a real PKCS#11 key (SoftHSM2) pass the verifier used on
// the Fabric vectors, chained onto the real Fabric chain.
func TestSignWithSoftHSM(t *testing.T) {
	tok := hsmtest.NewToken(t, "orderer-node")
	signer := tok.NewKey(t, "orderer")
	if _, ok := signer.Public().(*ecdsa.PublicKey); !ok {
		t.Fatalf("HSM key is %T", signer.Public())
	}
	// The HSM signs its own certificate.
	cert := testpki.SelfSigned(t, "orderer.member-a", testpki.OU("orderer"), testpki.Key(signer), testpki.Valid(time.Now().Add(-time.Hour), time.Now().Add(time.Hour))).Cert
	creator, err := proto.Marshal(&msp.SerializedIdentity{Mspid: "MemberA", IdBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../testdata/fabric-2.5.16/vectors-2.block")
	if err != nil {
		t.Fatal(err)
	}
	prev, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		b := block.New(prev.Header.Number+1, block.HeaderHash(prev.Header), [][]byte{prev.Data.Data[0], {byte(i)}})
		if err := block.Sign(b, signer, creator, 0, []byte("raft"), rand.Reader); err != nil {
			t.Fatalf("Sign with the HSM: %v", err)
		}
		if err := block.Verify(b, prev); err != nil {
			t.Fatalf("block %d: %v", b.Header.Number, err)
		}
		if err := block.VerifySignatures(b, block.VerifyCreatorSignature); err != nil {
			t.Fatalf("block %d signed by the HSM: %v", b.Header.Number, err)
		}
		prev = b
	}
}

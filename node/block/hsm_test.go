package block_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/node/block"
)

// Blocks signed with a real PKCS#11 key (SoftHSM2) pass the verifier used on
// the Fabric vectors, chained onto the real Fabric chain.
func TestSignWithSoftHSM(t *testing.T) {
	tok := hsmtest.NewToken(t, "orderer-node")
	signer := tok.NewKey(t, "orderer")
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("HSM key is %T", signer.Public())
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "orderer.member-a", OrganizationalUnit: []string{"orderer"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer) // the HSM signs its own certificate
	if err != nil {
		t.Fatal(err)
	}
	creator, err := proto.Marshal(&msp.SerializedIdentity{Mspid: "MemberA", IdBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})})
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

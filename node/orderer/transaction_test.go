package orderer

import (
	"bytes"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/peer"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
)

// TestEndorserTransaction: the envelope 'memberd ledger submit' writes is
// a well-formed Fabric transaction (channel header with type, channel, tx
// id and timestamp; signature header with creator and nonce; a
// peer.Transaction whose action header is the signature header and whose
// proposal hash is Fabric's), signed by the creator, and its data reads
// back; NewTransaction keeps the raw form, which is not a peer.Transaction.
func TestEndorserTransaction(t *testing.T) {
	ca := testpki.NewCA(t, "m1")
	leaf := ca.Issue(t, "client")
	id := Identity{MSPID: "m1MSP", Cert: leaf.Cert, Signer: leaf.Key}
	now := time.Now()
	data := []byte("hello ledger")
	env, txid, err := NewEndorserTransaction(id, "demo", data, now)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(env)
	e, err := block.ParseEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	if e.Type() != common.HeaderType_ENDORSER_TRANSACTION || e.ChannelID() != "demo" || e.TxID() != txid ||
		!e.ChannelHeader.GetTimestamp().AsTime().Equal(now) {
		t.Fatalf("channel header %v", e.ChannelHeader)
	}
	if err := e.CheckTxID(); err != nil {
		t.Fatal(err)
	}
	if err := e.VerifySignature(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.SignatureHeader.GetCreator(), id.Serialized()) || len(e.SignatureHeader.GetNonce()) != block.NonceSize {
		t.Fatalf("signature header %v", e.SignatureHeader)
	}
	got, err := TransactionData(e.Data)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("TransactionData = %q, %v", got, err)
	}
	tx := new(peer.Transaction)
	if err := proto.Unmarshal(e.Data, tx); err != nil {
		t.Fatal(err)
	}
	payload := new(common.Payload)
	if err := proto.Unmarshal(env.Payload, payload); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tx.Actions[0].Header, payload.Header.SignatureHeader) {
		t.Fatal("the action header is not the payload's signature header")
	}
	ccap := new(peer.ChaincodeActionPayload)
	prp := new(peer.ProposalResponsePayload)
	if err := proto.Unmarshal(tx.Actions[0].Payload, ccap); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(ccap.Action.ProposalResponsePayload, prp); err != nil {
		t.Fatal(err)
	}
	var hashed []byte
	hashed = append(append(append(hashed, payload.Header.ChannelHeader...), payload.Header.SignatureHeader...), ccap.ChaincodeProposalPayload...)
	if want := sha256Sum(hashed); !bytes.Equal(prp.ProposalHash, want) {
		t.Fatal("proposal hash is not SHA-256(channel header, signature header, proposal payload)")
	}

	rawEnv, _, err := NewTransaction(id, "demo", data, now)
	if err != nil {
		t.Fatal(err)
	}
	rp := new(common.Payload)
	if err := proto.Unmarshal(rawEnv.Payload, rp); err != nil || !bytes.Equal(rp.Data, data) {
		t.Fatalf("NewTransaction data %q, %v", rp.Data, err)
	}
	if _, err := TransactionData(rp.Data); err == nil {
		t.Fatal("raw data read as a data transaction")
	}
}

func FuzzTransactionData(f *testing.F) {
	b, _ := transactionBytes([]byte("ch"), []byte("sh"), []byte("data"))
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		TransactionData(in)
	})
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

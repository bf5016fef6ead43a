package block

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer/etcdraft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/memberd/memberd/internal/testpki"
)

// testIdentity is a software ECDSA P-256 key with a self-signed certificate,
// serialized as a Fabric MSP creator.
type testIdentity struct {
	key     *ecdsa.PrivateKey
	creator []byte
}

func newIdentity(t testing.TB, mspID, cn string) *testIdentity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return identityFor(t, key, mspID, cn)
}

// identityFor certifies key with a self-signed certificate valid from 1970
// to 2100.
func identityFor(t testing.TB, key *ecdsa.PrivateKey, mspID, cn string) *testIdentity {
	t.Helper()
	cert := testpki.SelfSigned(t, cn, testpki.Key(key), testpki.Valid(time.Unix(0, 0), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC))).Cert
	creator, err := proto.Marshal(&msp.SerializedIdentity{Mspid: mspID, IdBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})})
	if err != nil {
		t.Fatal(err)
	}
	return &testIdentity{key: key, creator: creator}
}

func decodeIdentity(t testing.TB, creator []byte) *msp.SerializedIdentity {
	t.Helper()
	id := new(msp.SerializedIdentity)
	if err := proto.Unmarshal(creator, id); err != nil {
		t.Fatal(err)
	}
	return id
}

// envelope builds an ENDORSER_TRANSACTION envelope signed by id, the way the
// Fabric vectors' load client does.
func (id *testIdentity) envelope(t testing.TB, channel string, data []byte) []byte {
	t.Helper()
	nonce := make([]byte, NonceSize)
	rand.Read(nonce)
	ch, _ := proto.Marshal(&common.ChannelHeader{
		Type:      int32(common.HeaderType_ENDORSER_TRANSACTION),
		ChannelId: channel,
		TxId:      ComputeTxID(nonce, id.creator),
		Timestamp: timestamppb.New(time.Unix(1700000000, 0)),
	})
	sh, _ := proto.Marshal(&common.SignatureHeader{Creator: id.creator, Nonce: nonce})
	payload, _ := proto.Marshal(&common.Payload{Header: &common.Header{ChannelHeader: ch, SignatureHeader: sh}, Data: data})
	sig, err := SignECDSA(id.key, &id.key.PublicKey, payload, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(&common.Envelope{Payload: payload, Signature: sig})
	return raw
}

// highSSigner returns only high-S signatures, like some HSMs can.
type highSSigner struct{ *ecdsa.PrivateKey }

func (h highSSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := h.PrivateKey.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	if low, err := IsLowS(&h.PublicKey, sig); err != nil || !low {
		return sig, err
	}
	return flipS(h.Curve.Params().N, sig), nil
}

// flipS replaces S by N−S (a still valid, other-S signature).
func flipS(n *big.Int, sig []byte) []byte {
	r, s, err := parseECDSASig(sig)
	if err != nil {
		panic(err)
	}
	s.Sub(n, s)
	type ecdsaSig struct{ R, S *big.Int }
	out, err := asn1Marshal(ecdsaSig{r, s})
	if err != nil {
		panic(err)
	}
	return out
}

func raftMetadata(t testing.TB, index uint64) []byte {
	raw, err := proto.Marshal(&etcdraft.BlockMetadata{ConsenterIds: []uint64{1, 2, 3}, NextConsenterId: 4, RaftIndex: index})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// buildAndVerify makes block prev+1 with envs, signs it with signer/creator
// and checks it with the verifier used on the Fabric vectors.
func buildAndVerify(t *testing.T, prev *common.Block, envs [][]byte, signer crypto.Signer, creator []byte) *common.Block {
	t.Helper()
	b := New(prev.Header.Number+1, HeaderHash(prev.Header), envs)
	if err := Sign(b, signer, creator, 0, raftMetadata(t, 7), rand.Reader); err != nil {
		t.Fatal(err)
	}
	raw, err := Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(got, prev); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if err := VerifySignatures(got, VerifyCreatorSignature); err != nil {
		t.Fatalf("VerifySignatures: %v", err)
	}
	return got
}

func TestSignExtendsFabricChain(t *testing.T) {
	orderer := newIdentity(t, "MemberA", "orderer.member-a")
	client := newIdentity(t, "MemberB", "client.member-b")
	prev := loadBlock(t, "vectors-2.block")
	envs := [][]byte{client.envelope(t, "vectors", []byte("one")), client.envelope(t, "vectors", []byte("two"))}
	// Fabric's own envelopes ride along byte for byte.
	envs = append(envs, loadBlock(t, "vectors-1.block").Data.Data[0])
	b := buildAndVerify(t, prev, envs, orderer.key, orderer.creator)

	for i, e := range b.Data.Data {
		if !bytes.Equal(e, envs[i]) {
			t.Errorf("envelope %d changed in the block", i)
		}
		if _, err := Admit(e, AdmitConfig{ChannelID: "vectors"}); err != nil {
			t.Errorf("envelope %d: %v", i, err)
		}
	}
	if len(b.Metadata.Metadata) != NumMetadataSlots {
		t.Errorf("%d metadata slots, want %d", len(b.Metadata.Metadata), NumMetadataSlots)
	}
	// Same metadata layout as the Fabric orderer: LAST_CONFIG Index 0 encodes
	// to zero bytes, consenter metadata decodes as etcdraft.BlockMetadata.
	fab := loadBlock(t, "vectors-2.block")
	if !bytes.Equal(b.Metadata.Metadata[common.BlockMetadataIndex_LAST_CONFIG], fab.Metadata.Metadata[common.BlockMetadataIndex_LAST_CONFIG]) {
		t.Errorf("LAST_CONFIG slot %x, Fabric writes %x", b.Metadata.Metadata[1], fab.Metadata.Metadata[1])
	}
	cm, err := ConsenterMetadata(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cm, raftMetadata(t, 7)) {
		t.Errorf("consenter metadata did not round-trip")
	}

	// A second block chains on ours.
	next := buildAndVerify(t, b, [][]byte{client.envelope(t, "vectors", nil)}, orderer.key, orderer.creator)
	if next.Header.Number != 4 {
		t.Errorf("next block number %d", next.Header.Number)
	}
}

func TestSignLastConfig(t *testing.T) {
	id := newIdentity(t, "MemberA", "orderer")
	b := New(9, bytes.Repeat([]byte{1}, 32), nil)
	if err := Sign(b, id.key, id.creator, 9, nil, rand.Reader); err != nil {
		t.Fatal(err)
	}
	if lc, err := LastConfigIndex(b); err != nil || lc != 9 {
		t.Errorf("LastConfigIndex = %d, %v; want 9", lc, err)
	}
	md := new(common.Metadata)
	lc := new(common.LastConfig)
	if err := proto.Unmarshal(b.Metadata.Metadata[common.BlockMetadataIndex_LAST_CONFIG], md); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(md.Value, lc); err != nil || lc.Index != 9 {
		t.Errorf("LAST_CONFIG slot index %d, %v; want 9", lc.Index, err)
	}
	// An empty block has the data hash of nothing.
	if err := Verify(b, nil); err != nil {
		t.Errorf("empty block: %v", err)
	}
}

func TestSignNormalisesHighS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	hs := highSSigner{key}
	id := identityFor(t, key, "MemberA", "orderer")
	prev := loadBlock(t, "vectors-0.block")
	for range 8 { // each signature is high-S before normalisation
		buildAndVerify(t, prev, nil, hs, id.creator)
	}
}

func TestSignRejectsNonECDSA(t *testing.T) {
	b := New(1, nil, nil)
	err := Sign(b, ed25519Signer(t), nil, 0, nil, rand.Reader)
	if !errors.Is(err, ErrUnsupportedKey) {
		t.Fatalf("Sign with ed25519: %v, want ErrUnsupportedKey", err)
	}
}

func TestVerifySignaturesFailures(t *testing.T) {
	a := newIdentity(t, "MemberA", "orderer.a")
	other := newIdentity(t, "MemberA", "orderer.a")
	prev := loadBlock(t, "vectors-0.block")
	b := New(1, HeaderHash(prev.Header), nil)

	// Signed by a's key but claiming other's certificate.
	if err := Sign(b, a.key, other.creator, 0, nil, rand.Reader); err != nil {
		t.Fatal(err)
	}
	if err := VerifySignatures(b, VerifyCreatorSignature); !errors.Is(err, ErrBadSignature) {
		t.Errorf("wrong certificate: %v, want ErrBadSignature", err)
	}

	// A high-S copy of a valid signature is refused.
	if err := Sign(b, a.key, a.creator, 0, nil, rand.Reader); err != nil {
		t.Fatal(err)
	}
	md := new(common.Metadata)
	if err := proto.Unmarshal(b.Metadata.Metadata[0], md); err != nil {
		t.Fatal(err)
	}
	md.Signatures[0].Signature = flipS(elliptic.P256().Params().N, md.Signatures[0].Signature)
	b.Metadata.Metadata[0], _ = proto.Marshal(md)
	if err := VerifySignatures(b, VerifyCreatorSignature); !errors.Is(err, ErrHighS) {
		t.Errorf("high-S: %v, want ErrHighS", err)
	}

	// Garbage in the SIGNATURES slot.
	b.Metadata.Metadata[0] = []byte{0xff, 0xff}
	if err := VerifySignatures(b, VerifyCreatorSignature); !errors.Is(err, ErrMalformed) {
		t.Errorf("garbage slot: %v, want ErrMalformed", err)
	}
	// The verifier's own error is passed through.
	custom := errors.New("not a consenter")
	if err := VerifySignatures(loadBlock(t, "vectors-1.block"), func(_, _, _ []byte) error { return custom }); !errors.Is(err, custom) {
		t.Errorf("verifier error: %v", err)
	}
}

func TestLowS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	msg := []byte("hello")
	for range 16 {
		sig, err := SignECDSA(key, &key.PublicKey, msg, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyECDSA(&key.PublicKey, msg, sig); err != nil {
			t.Fatalf("low-S signature: %v", err)
		}
		high := flipS(key.Curve.Params().N, sig)
		if err := VerifyECDSA(&key.PublicKey, msg, high); !errors.Is(err, ErrHighS) {
			t.Fatalf("high-S signature: %v, want ErrHighS", err)
		}
		if err := VerifyECDSA(&key.PublicKey, []byte("other"), sig); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("other message: %v, want ErrBadSignature", err)
		}
	}
	if err := VerifyECDSA(&key.PublicKey, msg, []byte{0x30, 0x00}); !errors.Is(err, ErrBadSignature) {
		t.Errorf("empty DER: %v", err)
	}
}

func asn1Marshal(v any) ([]byte, error) { return asn1.Marshal(v) }

func ed25519Signer(t testing.TB) crypto.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

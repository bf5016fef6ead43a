package block

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer/etcdraft"
	"google.golang.org/protobuf/proto"
)

// Vectors cut by a stock Fabric 2.5.16 orderer; see the README there.
const vectorsDir = "../testdata/fabric-2.5.16"

type inspect struct {
	File          string         `json:"file"`
	Channel       string         `json:"channel"`
	Number        uint64         `json:"number"`
	HeaderHash    string         `json:"header_hash"`
	PreviousHash  string         `json:"previous_hash"`
	DataHash      string         `json:"data_hash"`
	Envelopes     int            `json:"envelopes"`
	EnvelopeTypes map[string]int `json:"envelope_types"`
	SigsValid     int            `json:"envelope_signatures_valid"`
	TxIDsValid    int            `json:"tx_ids_valid"`
	LastConfig    *uint64        `json:"last_config"`
	Raft          *struct {
		ConsenterIDs    []uint64 `json:"consenter_ids"`
		NextConsenterID uint64   `json:"next_consenter_id"`
		RaftIndex       uint64   `json:"raft_index"`
	} `json:"raft"`
	Signatures []struct {
		MSPID string `json:"msp_id"`
		Valid bool   `json:"valid"`
	} `json:"signatures"`
}

func readVector(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(vectorsDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func loadBlock(t testing.TB, name string) *common.Block {
	t.Helper()
	b, err := Unmarshal(readVector(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func loadInspect(t *testing.T) []inspect {
	t.Helper()
	f, err := os.Open(filepath.Join(vectorsDir, "expected-inspect.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []inspect
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var in inspect
		if err := json.Unmarshal(sc.Bytes(), &in); err != nil {
			t.Fatal(err)
		}
		out = append(out, in)
	}
	if len(out) != 5 {
		t.Fatalf("expected-inspect.jsonl has %d lines, want 5", len(out))
	}
	return out
}

func TestVectorsHashes(t *testing.T) {
	for _, want := range loadInspect(t) {
		t.Run(want.File, func(t *testing.T) {
			b := loadBlock(t, want.File)
			if b.Header.Number != want.Number {
				t.Errorf("number %d, want %d", b.Header.Number, want.Number)
			}
			if got := hex.EncodeToString(HeaderHash(b.Header)); got != want.HeaderHash {
				t.Errorf("header hash %s, want %s", got, want.HeaderHash)
			}
			if got := hex.EncodeToString(DataHash(b.Data)); got != want.DataHash {
				t.Errorf("data hash %s, want %s", got, want.DataHash)
			}
			if got := hex.EncodeToString(b.Header.DataHash); got != want.DataHash {
				t.Errorf("header DataHash %s, want %s", got, want.DataHash)
			}
			if got := hex.EncodeToString(b.Header.PreviousHash); got != want.PreviousHash {
				t.Errorf("previous hash %s, want %s", got, want.PreviousHash)
			}
			if len(b.Data.Data) != want.Envelopes {
				t.Errorf("%d envelopes, want %d", len(b.Data.Data), want.Envelopes)
			}
			if err := Verify(b, nil); err != nil {
				t.Errorf("Verify: %v", err)
			}
			lc, err := LastConfigIndex(b)
			if err != nil {
				t.Fatalf("LastConfigIndex: %v", err)
			}
			if want.LastConfig != nil && lc != *want.LastConfig {
				t.Errorf("last config %d, want %d", lc, *want.LastConfig)
			}
		})
	}
}

func TestVectorsChain(t *testing.T) {
	chains := [][]string{
		{"vectors-0.block", "vectors-1.block", "vectors-2.block"},
		{"genesis.block", "config-update.block"},
	}
	for _, c := range chains {
		prev := loadBlock(t, c[0])
		for _, name := range c[1:] {
			b := loadBlock(t, name)
			if err := Verify(b, prev); err != nil {
				t.Errorf("%s after previous: %v", name, err)
			}
			if err := VerifyHeaderChain(b.Header, prev.Header); err != nil {
				t.Errorf("%s header chain: %v", name, err)
			}
			prev = b
		}
	}
	bad := []struct{ block, prev string }{
		{"vectors-2.block", "vectors-0.block"},     // skips a block
		{"vectors-1.block", "genesis.block"},       // other channel
		{"config-update.block", "vectors-0.block"}, // other channel
		{"vectors-1.block", "vectors-1.block"},     // itself
	}
	for _, c := range bad {
		if err := Verify(loadBlock(t, c.block), loadBlock(t, c.prev)); !errors.Is(err, ErrChain) {
			t.Errorf("Verify(%s, %s) = %v, want ErrChain", c.block, c.prev, err)
		}
	}
}

func TestVectorsOrdererSignature(t *testing.T) {
	ordererPEM := readVector(t, "orderer-signcert.pem")
	byFile := map[string]inspect{}
	for _, in := range loadInspect(t) {
		byFile[in.File] = in
	}
	for _, name := range []string{"vectors-1.block", "vectors-2.block", "config-update.block"} {
		t.Run(name, func(t *testing.T) {
			b := loadBlock(t, name)
			want := byFile[name]
			var signers []string
			err := VerifySignatures(b, func(creator, data, sig []byte) error {
				mspID, _, err := CreatorCertificate(creator)
				if err != nil {
					return err
				}
				id := decodeIdentity(t, creator)
				if !bytes.Equal(id.IdBytes, ordererPEM) {
					t.Errorf("signer certificate differs from orderer-signcert.pem")
				}
				signers = append(signers, mspID)
				return VerifyCreatorSignature(creator, data, sig)
			})
			if err != nil {
				t.Fatalf("VerifySignatures: %v", err)
			}
			if len(signers) != len(want.Signatures) || signers[0] != want.Signatures[0].MSPID {
				t.Errorf("signers %v, want %+v", signers, want.Signatures)
			}
			cm, err := ConsenterMetadata(b)
			if err != nil {
				t.Fatal(err)
			}
			var rm etcdraft.BlockMetadata
			if err := proto.Unmarshal(cm, &rm); err != nil {
				t.Fatalf("etcdraft metadata: %v", err)
			}
			if rm.RaftIndex != want.Raft.RaftIndex || rm.NextConsenterId != want.Raft.NextConsenterID || len(rm.ConsenterIds) != len(want.Raft.ConsenterIDs) {
				t.Errorf("raft metadata %v, want %+v", &rm, *want.Raft)
			}

			// Any change to the header breaks the signature.
			tampered := proto.Clone(b).(*common.Block)
			tampered.Header.Number++
			if err := VerifySignatures(tampered, VerifyCreatorSignature); !errors.Is(err, ErrBadSignature) {
				t.Errorf("tampered header: %v, want ErrBadSignature", err)
			}
		})
	}
	for _, name := range []string{"genesis.block", "vectors-0.block"} {
		if err := VerifySignatures(loadBlock(t, name), VerifyCreatorSignature); !errors.Is(err, ErrNoSignature) {
			t.Errorf("%s: %v, want ErrNoSignature (genesis blocks are unsigned)", name, err)
		}
	}
}

func TestVectorsDataTamper(t *testing.T) {
	b := loadBlock(t, "vectors-1.block")
	b.Data.Data[3] = append([]byte(nil), b.Data.Data[3]...)
	b.Data.Data[3][10] ^= 1
	if err := Verify(b, nil); !errors.Is(err, ErrDataHash) {
		t.Fatalf("Verify after flipping an envelope bit: %v, want ErrDataHash", err)
	}
}

// The block bytes round-trip: decoding and re-encoding a Fabric block keeps
// every hash and signature valid (verification never depends on re-marshalling).
func TestVectorsRemarshal(t *testing.T) {
	for _, name := range []string{"vectors-1.block", "vectors-2.block", "config-update.block"} {
		b := loadBlock(t, name)
		raw, err := Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, err := Unmarshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(b2, nil); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := VerifySignatures(b2, VerifyCreatorSignature); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestVectorsEnvelopes(t *testing.T) {
	orgPEM := readVector(t, "org1-client-cert.pem")
	byFile := map[string]inspect{}
	for _, in := range loadInspect(t) {
		byFile[in.File] = in
	}
	for _, name := range []string{"vectors-1.block", "vectors-2.block"} {
		b := loadBlock(t, name)
		for i, raw := range b.Data.Data {
			e, err := Admit(raw, AdmitConfig{
				ChannelID:        "vectors",
				AbsoluteMaxBytes: 99 << 20,
				Types:            []common.HeaderType{common.HeaderType_ENDORSER_TRANSACTION},
			})
			if err != nil {
				t.Fatalf("%s envelope %d: Admit: %v", name, i, err)
			}
			if e.Creator.Mspid != "Org1MSP" || !bytes.Equal(e.Creator.IdBytes, orgPEM) {
				t.Errorf("%s envelope %d: creator %q not the Org1 client", name, i, e.Creator.Mspid)
			}
			if len(e.SignatureHeader.Nonce) != NonceSize || len(e.Data) != 100 {
				t.Errorf("%s envelope %d: nonce %d bytes, data %d bytes; want 24 and 100", name, i, len(e.SignatureHeader.Nonce), len(e.Data))
			}
			sz, err := MessageSize(raw)
			if err != nil || sz != e.Size() {
				t.Errorf("MessageSize = %d, %v; want %d", sz, err, e.Size())
			}
			// The envelope is rejected once anything it signs changes.
			bad := bytes.Clone(raw)
			bad[len(bad)-80] ^= 0x40 // inside Payload.Data
			if _, err := Admit(bad, AdmitConfig{}); !errors.Is(err, ErrBadSignature) {
				t.Errorf("%s envelope %d tampered: %v, want ErrBadSignature", name, i, err)
			}
		}
		if got := byFile[name].SigsValid; got != len(b.Data.Data) {
			t.Errorf("inspector says %d valid signatures, block has %d envelopes", got, len(b.Data.Data))
		}
	}

	// config-update.block: the orderer signs the CONFIG envelope; its TxId is empty.
	cu := loadBlock(t, "config-update.block")
	e, err := ParseEnvelope(cu.Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	if e.Type() != common.HeaderType_CONFIG || e.Creator.Mspid != "OrdererMSP" {
		t.Errorf("config-update envelope: type %s creator %q", e.Type(), e.Creator.Mspid)
	}
	if err := e.VerifySignature(); err != nil {
		t.Errorf("config-update envelope signature: %v", err)
	}
	if err := e.CheckTxID(); !errors.Is(err, ErrTxID) {
		t.Errorf("config-update TxId check: %v, want ErrTxID (empty TxId)", err)
	}
	if _, err := Admit(cu.Data.Data[0], AdmitConfig{Types: []common.HeaderType{common.HeaderType_ENDORSER_TRANSACTION}}); !errors.Is(err, ErrHeaderType) {
		t.Errorf("Admit CONFIG as endorser tx: %v, want ErrHeaderType", err)
	}
	if _, err := Admit(cu.Data.Data[0], AdmitConfig{ChannelID: "vectors"}); !errors.Is(err, ErrWrongChannel) {
		t.Errorf("Admit to wrong channel: %v, want ErrWrongChannel", err)
	}
	// genesis: configtxgen's CONFIG envelope has no creator and a TxId that
	// matches (the inspector counts it valid).
	g, err := ParseEnvelope(loadBlock(t, "genesis.block").Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	if g.Creator != nil {
		t.Errorf("genesis envelope has creator %v", g.Creator)
	}
	if err := g.CheckTxID(); err != nil {
		t.Errorf("genesis TxId: %v", err)
	}
	if _, err := Admit(loadBlock(t, "genesis.block").Data.Data[0], AdmitConfig{}); !errors.Is(err, ErrNoCreator) {
		t.Errorf("Admit genesis envelope: %v, want ErrNoCreator", err)
	}
}

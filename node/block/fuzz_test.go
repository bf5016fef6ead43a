package block

import (
	"bytes"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"
)

var vectorFiles = []string{"genesis.block", "config-update.block", "vectors-0.block", "vectors-1.block", "vectors-2.block"}

func addEnvelopeSeeds(f *testing.F) {
	for _, name := range vectorFiles {
		b := loadBlock(f, name)
		for _, e := range b.Data.Data {
			f.Add(e)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	f.Add(sizedEnv('a', 3))
}

// FuzzAdmit: parsing and admission never panic; whatever is admitted is a
// consistent, verifiable envelope; MessageSize agrees with the full decoder.
func FuzzAdmit(f *testing.F) {
	addEnvelopeSeeds(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		sz, szErr := MessageSize(raw)
		var env common.Envelope
		if err := proto.Unmarshal(raw, &env); err == nil {
			if szErr != nil {
				t.Fatalf("proto decodes the envelope but MessageSize fails: %v", szErr)
			}
			if want := uint32(len(env.Payload) + len(env.Signature)); sz != want {
				t.Fatalf("MessageSize %d, decoder says %d", sz, want)
			}
		}
		e, err := ParseEnvelope(raw)
		if err != nil {
			return
		}
		if !bytes.Equal(e.Raw, raw) || e.Size() != sz {
			t.Fatalf("parsed envelope does not describe its input")
		}
		a, err := Admit(raw, AdmitConfig{AbsoluteMaxBytes: 1 << 20})
		if err != nil {
			return
		}
		if a.Creator == nil || a.CheckTxID() != nil || a.VerifySignature() != nil {
			t.Fatalf("admitted an envelope that fails its own checks")
		}
	})
}

// FuzzBlockVerify: decoding and verifying arbitrary block bytes never
// panics, and a block that verifies keeps verifying after a re-encode.
func FuzzBlockVerify(f *testing.F) {
	for _, name := range vectorFiles {
		f.Add(readVector(f, name))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := Unmarshal(raw)
		if err != nil {
			return
		}
		_ = HeaderHash(b.Header)
		_, _ = LastConfigIndex(b)
		_, _ = ConsenterMetadata(b)
		sigErr := VerifySignatures(b, VerifyCreatorSignature)
		if Verify(b, nil) != nil {
			return
		}
		re, err := Marshal(b)
		if err != nil {
			t.Fatalf("verified block does not marshal: %v", err)
		}
		b2, err := Unmarshal(re)
		if err != nil || Verify(b2, nil) != nil {
			t.Fatalf("verified block fails after re-encode: %v", err)
		}
		if (VerifySignatures(b2, VerifyCreatorSignature) == nil) != (sigErr == nil) {
			t.Fatalf("signature verdict changed after re-encode")
		}
	})
}

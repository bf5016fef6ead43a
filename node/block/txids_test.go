package block

import (
	"slices"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// parsedTxIDs is what loadRecent used to collect: the id of every envelope
// ParseEnvelope accepts.
func parsedTxIDs(b *common.Block) []string {
	var ids []string
	for _, env := range b.GetData().GetData() {
		if e, err := ParseEnvelope(env); err == nil {
			ids = append(ids, e.TxID())
		}
	}
	return ids
}

func txIDsOf(t testing.TB, raw []byte) []string {
	var ids []string
	if err := TxIDs(raw, func(id string) { ids = append(ids, id) }); err != nil {
		t.Fatalf("TxIDs: %v", err)
	}
	return ids
}

func TestTxIDs(t *testing.T) {
	id := newIdentity(t, "Org1MSP", "client")
	env := id.envelope(t, "ch", []byte("payload"))
	want, err := ParseEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	// An envelope whose payload header occurs twice: proto merges the two
	// headers, so the id is that of the second channel header.
	var pl common.Payload
	if err := proto.Unmarshal(want.Payload, &pl); err != nil {
		t.Fatal(err)
	}
	other := proto.Clone(want.ChannelHeader).(*common.ChannelHeader)
	other.TxId = "second"
	otherRaw, _ := proto.Marshal(other)
	extra, _ := proto.Marshal(&common.Header{ChannelHeader: otherRaw})
	twoHeaders := protowire.AppendBytes(protowire.AppendTag(slices.Clone(want.Payload), 1, protowire.BytesType), extra)
	merged, _ := proto.Marshal(&common.Envelope{Payload: twoHeaders, Signature: want.Signature})
	noID := func() []byte {
		ch := proto.Clone(want.ChannelHeader).(*common.ChannelHeader)
		ch.TxId = ""
		chRaw, _ := proto.Marshal(ch)
		p := proto.Clone(&pl).(*common.Payload)
		p.Header.ChannelHeader = chRaw
		pRaw, _ := proto.Marshal(p)
		e, _ := proto.Marshal(&common.Envelope{Payload: pRaw})
		return e
	}()
	for _, tc := range []struct {
		name string
		envs [][]byte
		want []string
	}{
		{"none", nil, nil},
		{"one", [][]byte{env}, []string{want.TxID()}},
		{"merged header", [][]byte{merged, env}, []string{"second", want.TxID()}},
		{"empty id", [][]byte{noID}, []string{""}},
		{"garbage skipped", [][]byte{{0xff, 0xff}, env, {}}, []string{want.TxID()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New(7, nil, tc.envs)
			raw, err := Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			got := txIDsOf(t, raw)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("TxIDs = %q, want %q", got, tc.want)
			}
			if p := parsedTxIDs(b); !slices.Equal(got, p) {
				t.Fatalf("TxIDs = %q, ParseEnvelope gives %q", got, p)
			}
		})
	}
	if err := TxIDs([]byte{0xff}, func(string) {}); err == nil {
		t.Fatal("TxIDs accepted a malformed block")
	}
}

// FuzzTxIDs: for any envelope, TxIDs reports the id ParseEnvelope gives
// when it accepts the envelope, and at most one id otherwise.
func FuzzTxIDs(f *testing.F) {
	addEnvelopeSeeds(f)
	f.Fuzz(func(t *testing.T, env []byte) {
		b := New(1, nil, [][]byte{env})
		raw, err := Marshal(b)
		if err != nil {
			t.Skip()
		}
		got := txIDsOf(t, raw)
		if e, err := ParseEnvelope(env); err == nil {
			if len(got) != 1 || got[0] != e.TxID() {
				t.Fatalf("TxIDs = %q, ParseEnvelope gives %q", got, e.TxID())
			}
		} else if len(got) > 1 {
			t.Fatalf("TxIDs = %q for one envelope", got)
		}
	})
}

// BenchmarkTxIDs compares TxIDs with what loadRecent did before (unmarshal
// the block, ParseEnvelope each envelope) on a block of 100 1 KB envelopes.
func BenchmarkTxIDs(b *testing.B) {
	id := newIdentity(b, "Org1MSP", "client")
	envs := make([][]byte, 100)
	for i := range envs {
		envs[i] = id.envelope(b, "ch", make([]byte, 1024))
	}
	raw, _ := Marshal(New(1, nil, envs))
	b.Run("TxIDs", func(b *testing.B) {
		for b.Loop() {
			n := 0
			TxIDs(raw, func(string) { n++ })
		}
	})
	b.Run("Unmarshal+ParseEnvelope", func(b *testing.B) {
		for b.Loop() {
			blk, _ := Unmarshal(raw)
			parsedTxIDs(blk)
		}
	})
}

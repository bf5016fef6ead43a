package orderer

import (
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// FuzzAdmission feeds arbitrary bytes to the Broadcast admission path: it
// must never panic, and whatever it admits must be a well-formed envelope of
// this channel, within the size limit, signed by a writer member.
func FuzzAdmission(f *testing.F) {
	c := newConsortium(f, 2, block.CutterConfig{})
	w := c.identity(f, "m1", "writer")
	env, _, err := NewTransaction(w, "trade", []byte("seed"), time.Now())
	if err != nil {
		f.Fatal(err)
	}
	good, _ := proto.Marshal(env)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00, 0x12, 0x00})
	cu, _, _ := NewEnvelope(w, common.HeaderType_CONFIG_UPDATE, "trade", []byte("cu"), time.Now())
	rawCU, _ := proto.Marshal(cu)
	f.Add(rawCU)
	adm := newAdmitter("trade", 4096, c.policy, time.Now)
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := adm.admitBroadcast(raw)
		if err != nil {
			if StatusOf(err) == common.Status_SUCCESS {
				t.Fatalf("error %v maps to SUCCESS", err)
			}
			return
		}
		if e.ChannelID() != "trade" || e.Size() > 4096 || e.Type() != common.HeaderType_ENDORSER_TRANSACTION {
			t.Fatalf("admitted %s on %q size %d", e.Type(), e.ChannelID(), e.Size())
		}
		if err := e.VerifySignature(); err != nil {
			t.Fatalf("admitted an envelope whose signature fails: %v", err)
		}
	})
}

// FuzzDecodeEntry: the raft entry decoder never panics, and a decoded block
// re-encodes to an entry that decodes to the same header.
func FuzzDecodeEntry(f *testing.F) {
	b := block.New(1, []byte("prev"), [][]byte{[]byte("a"), []byte("b")})
	e, _ := encodeBlockEntry(b)
	f.Add(e)
	ce, _ := encodeConfigEntry(b, 3, policy.Hash{1, 2, 3})
	f.Add(ce)
	f.Add(noopEntry)
	f.Add([]byte{entryVersion, 7})
	f.Add([]byte{9, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, b, err := decodeEntry(data)
		if typ == entryConfig && err == nil {
			src, _, _ := decodeConfigEntry(data)
			again, err := encodeConfigEntry(b, src.version, src.hash)
			if err != nil {
				t.Fatal(err)
			}
			src2, b2, err := decodeConfigEntry(again)
			if err != nil || src2 != src || string(block.HeaderHash(b2.Header)) != string(block.HeaderHash(b.Header)) {
				t.Fatalf("config entry round trip: %v", err)
			}
		}
		if typ != entryBlock || err != nil {
			return
		}
		if num, ok := peekBlockNumber(data); !ok || num != b.Header.Number {
			t.Fatalf("peekBlockNumber = %d, %v; block number %d", num, ok, b.Header.Number)
		}
		again, err := encodeBlockEntry(b)
		if err != nil {
			t.Fatal(err)
		}
		_, b2, err := decodeEntry(again)
		if err != nil || string(block.HeaderHash(b2.Header)) != string(block.HeaderHash(b.Header)) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

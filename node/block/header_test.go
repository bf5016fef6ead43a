package block

import (
	"bytes"
	"encoding/asn1"
	"math"
	"math/big"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
)

// HeaderBytes is byte-identical to Fabric's encoding/asn1 encoding of
// struct{Number *big.Int; PreviousHash, DataHash []byte} at every integer
// and length boundary.
func TestHeaderBytesMatchesEncodingASN1(t *testing.T) {
	type fabricHeader struct {
		Number       *big.Int
		PreviousHash []byte
		DataHash     []byte
	}
	numbers := []uint64{0, 1, 127, 128, 255, 256, 32767, 32768, 1 << 31, 1<<63 - 1, 1 << 63, math.MaxUint64}
	lengths := []int{0, 1, 32, 127, 128, 255, 256, 65535, 65536}
	for _, n := range numbers {
		for _, l := range lengths {
			h := &common.BlockHeader{Number: n, PreviousHash: bytes.Repeat([]byte{0xab}, l), DataHash: bytes.Repeat([]byte{0xcd}, 32)}
			want, err := asn1.Marshal(fabricHeader{new(big.Int).SetUint64(n), h.PreviousHash, h.DataHash})
			if err != nil {
				t.Fatal(err)
			}
			if got := HeaderBytes(h); !bytes.Equal(got, want) {
				t.Fatalf("number %d, hash length %d: %x, want %x", n, l, got[:min(len(got), 40)], want[:min(len(want), 40)])
			}
		}
	}
	// nil and empty hashes encode alike (Fabric genesis blocks have none).
	want, _ := asn1.Marshal(fabricHeader{big.NewInt(0), []byte{}, []byte{}})
	if got := HeaderBytes(nil); !bytes.Equal(got, want) {
		t.Fatalf("nil header: %x, want %x", got, want)
	}
}

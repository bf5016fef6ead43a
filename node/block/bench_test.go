package block

import (
	"crypto/rand"
	"testing"
)

func BenchmarkHeaderHash(b *testing.B) {
	h := loadBlock(b, "vectors-1.block").Header
	b.ReportAllocs()
	for b.Loop() {
		HeaderHash(h)
	}
}

// BenchmarkNew builds a block of 500 envelopes of 1 KB (data hash included).
func BenchmarkNew(b *testing.B) {
	envs := make([][]byte, 500)
	for i := range envs {
		envs[i] = make([]byte, 1024)
	}
	b.SetBytes(500 * 1024)
	b.ReportAllocs()
	for b.Loop() {
		New(7, make([]byte, 32), envs)
	}
}

// BenchmarkSign is the software-key cost of signing one block.
func BenchmarkSign(b *testing.B) {
	id := newIdentity(b, "MemberA", "orderer")
	blk := New(7, make([]byte, 32), nil)
	b.ReportAllocs()
	for b.Loop() {
		if err := Sign(blk, id.key, id.creator, 0, nil, rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAdmit is the per-envelope admission cost (parse, TxId, certificate
// parse, low-S ECDSA verify) on a real Fabric envelope.
func BenchmarkAdmit(b *testing.B) {
	env := loadBlock(b, "vectors-1.block").Data.Data[0]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Admit(env, AdmitConfig{ChannelID: "vectors"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMessageSize(b *testing.B) {
	env := loadBlock(b, "vectors-1.block").Data.Data[0]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := MessageSize(env); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAdmitCached is BenchmarkAdmit with a CreatorCache (the client
// certificate is parsed once).
func BenchmarkAdmitCached(b *testing.B) {
	env := loadBlock(b, "vectors-1.block").Data.Data[0]
	cache := NewCreatorCache(0)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Admit(env, AdmitConfig{ChannelID: "vectors", Verify: cache.Verify}); err != nil {
			b.Fatal(err)
		}
	}
}

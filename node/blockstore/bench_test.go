package blockstore

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
)

// benchChain returns n unsigned blocks of envs envelopes of 1 KB each,
// starting at block 0 (building them is not timed).
func benchChain(b *testing.B, n, envs int) []*common.Block {
	data := make([][]byte, envs)
	for i := range data {
		data[i] = make([]byte, 1024)
		rand.Read(data[i])
	}
	out := make([]*common.Block, n)
	var prev []byte
	for i := range out {
		out[i] = block.New(uint64(i), prev, data)
		prev = block.HeaderHash(out[i].Header)
	}
	return out
}

// BenchmarkAppend compares the store's durable append with the floor for
// the same bytes on the same disk: a plain write followed by fsync (and
// fdatasync, what the store uses). Run them together and compare ns/op.
func BenchmarkAppend(b *testing.B) {
	const envs = 10 // ~10 KB blocks
	b.Run("store", func(b *testing.B) {
		chain := benchChain(b, b.N, envs)
		s, err := Open(b.TempDir(), Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		raw, _ := block.Marshal(chain[0])
		b.SetBytes(int64(len(raw)))
		b.ResetTimer()
		for i := range b.N {
			if err := s.Append(chain[i]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("store-batch16", func(b *testing.B) {
		chain := benchChain(b, b.N*16, envs)
		s, err := Open(b.TempDir(), Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		raw, _ := block.Marshal(chain[0])
		b.SetBytes(int64(16 * len(raw)))
		b.ResetTimer()
		for i := range b.N {
			if err := s.AppendBatch(chain[i*16 : (i+1)*16]); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, base := range []struct {
		name string
		sync func(*os.File) error
	}{
		{"baseline-write-fsync", (*os.File).Sync},
		{"baseline-write-fdatasync", fdatasync},
	} {
		b.Run(base.name, func(b *testing.B) {
			raw, _ := block.Marshal(benchChain(b, 1, envs)[0])
			rec := appendRecord(nil, raw)
			f, err := os.Create(filepath.Join(b.TempDir(), "plain"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(int64(len(raw)))
			b.ResetTimer()
			for range b.N {
				if _, err := f.Write(rec); err != nil {
					b.Fatal(err)
				}
				if err := base.sync(f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGet measures a read of a stored ~10 KB block (page cache warm).
func BenchmarkGet(b *testing.B) {
	chain := benchChain(b, 64, 10)
	s, err := Open(b.TempDir(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.AppendBatch(chain); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		if _, err := s.GetRaw(i % 64); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkOpen measures Open (full scan: checksums, numbers, header chain)
// of a store of 1000 blocks of ~10 KB (page cache warm).
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir, Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.AppendBatch(benchChain(b, 1000, 10)); err != nil {
		b.Fatal(err)
	}
	s.Close()
	st, _ := os.Stat(filepath.Join(dir, dataFile))
	b.SetBytes(st.Size())
	for b.Loop() {
		s, err := Open(dir, Config{})
		if err != nil {
			b.Fatal(err)
		}
		if s.Height() != 1000 {
			b.Fatal("height")
		}
		s.Close()
	}
}

// BenchmarkAppendInterleaved alternates a store Append and a plain
// write+fdatasync of the same record to another file on the same disk, in
// one loop, so both see the same disk load (the machine is shared), and
// reports each mean and their ratio.
func BenchmarkAppendInterleaved(b *testing.B) {
	chain := benchChain(b, b.N, 10)
	s, err := Open(b.TempDir(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	f, err := os.Create(filepath.Join(b.TempDir(), "plain"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	raw, _ := block.Marshal(chain[0])
	rec := appendRecord(nil, raw)
	var store, base time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := s.Append(chain[i]); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := fdatasync(f); err != nil {
			b.Fatal(err)
		}
		store += t1.Sub(t0)
		base += time.Since(t1)
	}
	b.ReportMetric(float64(store.Nanoseconds())/float64(b.N), "store-ns/append")
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "baseline-ns/append")
	b.ReportMetric(float64(store)/float64(base), "store/baseline")
}

package blockstore

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
)

// writeChain fills a new store in dir with n blocks of envs 1 KB envelopes
// (the same random envelopes in each), in batches of 1000 (one fsync
// each), and returns the file size.
func writeChain(b *testing.B, dir string, n, envs int) int64 {
	s, err := Open(dir, Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := benchChain(b, 1, envs)[0].Data.Data
	for s.Height() < uint64(n) {
		if err := s.AppendBatch(chainFrom(s, min(1000, n-int(s.Height())), data)); err != nil {
			b.Fatal(err)
		}
	}
	st, err := os.Stat(filepath.Join(dir, dataFile))
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

// chainFrom returns the m blocks that follow s's last block, each holding
// data.
func chainFrom(s *Store, m int, data [][]byte) []*common.Block {
	var prev []byte
	if h := s.LastHeader(); h != nil {
		prev = block.HeaderHash(h)
	}
	next := s.Height()
	out := make([]*common.Block, m)
	for i := range out {
		out[i] = block.New(next+uint64(i), prev, data)
		prev = block.HeaderHash(out[i].Header)
	}
	return out
}

// BenchmarkOpenChainLength is Open's time against the chain's length, the
// way it opened before blocks.idx (a full scan: every block's checksum,
// number and header hash) and now (the index, then the last tailCheck
// blocks), alternating the two in one loop so both see the same machine
// load. Blocks hold two 1 KB envelopes (~2.2 KB); the page cache is warm,
// so the full scan's figure is a floor (a cold start reads the whole file
// from disk). The chains are written to the temporary directory once per
// length (not timed) and removed after.
func BenchmarkOpenChainLength(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("blocks=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			size := writeChain(b, dir, n, 2)
			open := func(cfg Config) time.Duration {
				t0 := time.Now()
				s, err := Open(dir, cfg)
				if err != nil {
					b.Fatal(err)
				}
				took := time.Since(t0)
				if s.Height() != uint64(n) {
					b.Fatalf("height %d, want %d", s.Height(), n)
				}
				s.Close()
				return took
			}
			open(Config{}) // writes the index
			var full, tail time.Duration
			for b.Loop() {
				full += open(Config{noIndex: true})
				tail += open(Config{})
			}
			b.ReportMetric(float64(size)/1e6, "MB")
			b.ReportMetric(float64(full.Microseconds())/float64(b.N)/1000, "full-scan-ms")
			b.ReportMetric(float64(tail.Microseconds())/float64(b.N)/1000, "indexed-ms")
			b.ReportMetric(float64(full)/float64(tail), "full/indexed")
		})
	}
}

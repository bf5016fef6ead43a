package blockstore

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
)

// writeChain fills a store in dir with n blocks of envs 1 KB envelopes,
// in batches (one fsync per batch), and returns the file size.
func writeChain(b *testing.B, dir string, n, envs int) int64 {
	s, err := Open(dir, Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const batch = 1000
	proto := benchChain(b, 1, envs)[0]
	data := proto.Data.Data
	for s.Height() < uint64(n) {
		m := min(batch, n-int(s.Height()))
		bs := chainFrom(s, m, data)
		if err := s.AppendBatch(bs); err != nil {
			b.Fatal(err)
		}
	}
	st, err := os.Stat(filepath.Join(dir, dataFile))
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

func BenchmarkOpenChain(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		dir := b.TempDir()
		size := writeChain(b, dir, n, 2)
		b.Run(fmt.Sprintf("blocks=%d", n), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				s, err := Open(dir, Config{})
				if err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
		})
	}
}

// chainFrom returns the next m blocks after s's last block, each holding data.
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

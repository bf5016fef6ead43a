package blockstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
)

// longChain is a chain well past tailCheck blocks: Fabric's three vector
// blocks and small blocks of ours.
func longChain(t testing.TB, n int) []*common.Block {
	chain := fabricBlocks(t)
	return append(chain, nextBlocks(t, chain[2], n-len(chain), 1, 40)...)
}

// storeDir writes chain to a new store and returns its directory and the
// record offsets.
func storeDir(t testing.TB, chain []*common.Block) (string, []loc) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if err := s.AppendBatch(chain[:len(chain)/2]); err != nil {
		t.Fatal(err)
	}
	appendAll(t, s, chain[len(chain)/2:])
	locs := s.locs
	s.Close()
	return dir, locs
}

func patchFile(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	patchFile(t, path, off, []byte{raw[off] ^ 0x5a})
}

// Open reads the tail, not the whole chain: a block damaged in the middle
// of a long chain does not stop the start (it used to: Open scanned every
// block), Get of it reports it, and Verify finds it, naming its offset.
func TestOpenChecksTailVerifyFindsMiddle(t *testing.T) {
	chain := longChain(t, 200)
	dir, locs := storeDir(t, chain)
	data := filepath.Join(dir, dataFile)
	bad := locs[50]
	flipByte(t, data, bad.off+recHeaderSize+10)

	s, err := Open(dir, Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open of a chain damaged in the middle: %v (the start must not read the whole chain)", err)
	}
	defer s.Close()
	if s.Height() != 200 {
		t.Fatalf("height %d, want 200", s.Height())
	}
	if _, err := s.Get(50); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get(50) of the damaged block: %v, want ErrCorrupt", err)
	}
	var last, total int64
	err = s.Verify(context.Background(), func(done, all int64) { last, total = done, all })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", bad.off)) {
		t.Fatalf("Verify: %v, want ErrCorrupt at offset %d", err, bad.off)
	}
	if total != locs[199].end() || last <= bad.off {
		t.Fatalf("progress %d of %d, want past %d of %d", last, total, bad.off, locs[199].end())
	}
	// Appends go on (the damage is the operator's to repair).
	if err := s.Append(nextBlocks(t, chain[199], 1, 1, 40)[0]); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	chain := longChain(t, 100)
	dir, _ := storeDir(t, chain)
	s := mustOpen(t, dir)
	defer s.Close()
	var done, total int64
	if err := s.Verify(context.Background(), func(d, t int64) { done, total = d, t }); err != nil {
		t.Fatalf("Verify of an intact store: %v", err)
	}
	if done != total || total != s.size {
		t.Fatalf("progress ended at %d of %d, store size %d", done, total, s.size)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Verify(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with a cancelled context: %v", err)
	}
	// A record cut short inside the chain is damage for Verify, not a torn
	// tail: its block was acknowledged.
	st, _ := os.Stat(filepath.Join(dir, dataFile))
	flipByte(t, filepath.Join(dir, dataFile), st.Size()-1)
	if err := s.Verify(context.Background(), nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify of a damaged last block: %v, want ErrCorrupt", err)
	}
	s.Close()
	if err := s.Verify(context.Background(), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Verify after Close: %v", err)
	}
}

// The tail check keeps the crash guarantees with an index: a torn last
// record, or a tail cut anywhere (the index then lists blocks the file no
// longer has), is cut back to the last whole block and taken again; damage
// in the checked tail with intact records after it is still corruption.
func TestIndexedTail(t *testing.T) {
	chain := longChain(t, 200)
	t.Run("torn last record", func(t *testing.T) {
		dir, locs := storeDir(t, chain)
		for _, cut := range []int64{locs[199].off + 3, locs[199].off + recHeaderSize + 5, locs[199].end() - 1} {
			if err := os.Truncate(filepath.Join(dir, dataFile), cut); err != nil {
				t.Fatal(err)
			}
			s := mustOpen(t, dir)
			if s.Height() != 199 || s.Recovered().TruncatedAt != locs[199].off {
				t.Fatalf("cut at %d: height %d, recovery %+v", cut, s.Height(), s.Recovered())
			}
			appendAll(t, s, chain[199:])
			s.Close()
		}
		s := mustOpen(t, dir)
		defer s.Close()
		checkBlocks(t, s, chain)
		if err := s.Verify(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
	})
	for _, keep := range []int{120, 150, 180} {
		t.Run(fmt.Sprintf("tail cut inside block %d", keep), func(t *testing.T) {
			dir, locs := storeDir(t, chain)
			if err := os.Truncate(filepath.Join(dir, dataFile), locs[keep].off+recHeaderSize+7); err != nil {
				t.Fatal(err)
			}
			s := mustOpen(t, dir)
			if s.Height() != uint64(keep) {
				t.Fatalf("height %d, want %d", s.Height(), keep)
			}
			appendAll(t, s, chain[keep:])
			s.Close()
			s = mustOpen(t, dir)
			defer s.Close()
			checkBlocks(t, s, chain)
		})
	}
	t.Run("damage in the checked tail", func(t *testing.T) {
		dir, locs := storeDir(t, chain)
		flipByte(t, filepath.Join(dir, dataFile), locs[190].off+recHeaderSize+3)
		before, _ := os.ReadFile(filepath.Join(dir, dataFile))
		_, err := Open(dir, Config{Logger: testLogger(t)})
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", locs[190].off)) {
			t.Fatalf("Open: %v, want ErrCorrupt at offset %d", err, locs[190].off)
		}
		if after, _ := os.ReadFile(filepath.Join(dir, dataFile)); !bytes.Equal(before, after) {
			t.Fatal("Open modified a corrupt store")
		}
	})
}

// The index is a cache: whatever happens to it, Open serves the blocks of
// blocks.dat, and rewrites it.
func TestIndexDamage(t *testing.T) {
	chain := longChain(t, 200)
	other := longChain(t, 200) // same numbers, other blocks
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string, locs []loc)
	}{
		{"missing", func(t *testing.T, dir string, _ []loc) { os.Remove(filepath.Join(dir, indexFile)) }},
		{"empty", func(t *testing.T, dir string, _ []loc) { os.Truncate(filepath.Join(dir, indexFile), 0) }},
		{"bad header", func(t *testing.T, dir string, _ []loc) { flipByte(t, filepath.Join(dir, indexFile), 3) }},
		{"zeros in the middle", func(t *testing.T, dir string, _ []loc) {
			patchFile(t, filepath.Join(dir, indexFile), fileHeaderSize+40*indexEntrySize, make([]byte, 4096))
		}},
		{"entry flipped near the end", func(t *testing.T, dir string, _ []loc) {
			flipByte(t, filepath.Join(dir, indexFile), fileHeaderSize+190*indexEntrySize+2)
		}},
		{"half an entry", func(t *testing.T, dir string, _ []loc) {
			os.Truncate(filepath.Join(dir, indexFile), fileHeaderSize+150*indexEntrySize+7)
		}},
		{"index of another chain", func(t *testing.T, dir string, _ []loc) {
			odir, _ := storeDir(t, other)
			idx, err := os.ReadFile(filepath.Join(odir, indexFile))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, indexFile), idx, 0o640)
		}},
		{"entries past the blocks", func(t *testing.T, dir string, locs []loc) {
			var buf []byte
			l := locs[199]
			for range 10 {
				l = loc{off: l.end(), n: l.n, crc: l.crc}
				buf = appendIndexEntry(buf, l)
			}
			patchFile(t, filepath.Join(dir, indexFile), fileHeaderSize+200*indexEntrySize, buf)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, locs := storeDir(t, chain)
			tc.damage(t, dir, locs)
			s := mustOpen(t, dir)
			checkBlocks(t, s, chain)
			if err := s.Verify(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			s.Close()
			// Rewritten whole: the next Open trusts all of it.
			f, err := os.Open(filepath.Join(dir, indexFile))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := readIndex(f, locs[199].end(), DefaultMaxBlockBytes, 0)
			if err != nil || len(got) != 200 || got[199] != locs[199] {
				t.Fatalf("index after Open: %d entries, %v", len(got), err)
			}
		})
	}
}

func TestTailStart(t *testing.T) {
	chain := func(sizes ...uint32) []loc {
		var out []loc
		off := int64(fileHeaderSize)
		for _, n := range sizes {
			out = append(out, loc{off: off, n: n})
			off += recHeaderSize + int64(n)
		}
		return out
	}
	small := make([]uint32, 200)
	big := make([]uint32, 200)
	for i := range small {
		small[i], big[i] = 1000, 1<<20
	}
	for _, tc := range []struct {
		name string
		locs []loc
		want int
	}{
		{"empty", nil, 0},
		{"short chain: all", chain(small[:10]...), 0},
		{"small blocks: the last 64", chain(small...), 200 - tailCheck},
		{"1 MiB blocks: the last 4 MiB", chain(big...), 197},
		{"huge blocks: still the last two", chain(100, 1<<30, 1<<30), 1},
	} {
		if got := tailStart(tc.locs); got != tc.want {
			t.Errorf("%s: tailStart = %d, want %d", tc.name, got, tc.want)
		}
	}
}

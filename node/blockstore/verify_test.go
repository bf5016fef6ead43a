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
)

// dirState is every file of dir with its content, to show that a check
// changed nothing.
func dirState(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string][]byte)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = b
	}
	return m
}

func sameState(t testing.TB, before, after map[string][]byte) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("files %d before, %d after", len(before), len(after))
	}
	for name, b := range before {
		if !bytes.Equal(b, after[name]) {
			t.Fatalf("%s changed: %d bytes before, %d after", name, len(b), len(after[name]))
		}
	}
}

// A damaged last block that blocks.idx lists (its entry lies wholly
// inside blocks.dat, and entries are written only after the data fsync)
// was acknowledged: Open reports it as corruption, naming its offset, and
// leaves the files alone, with a long chain (the tail read from the index)
// as with a short one (a full scan). It used to cut it as a torn tail.
func TestOpenRefusesDamagedIndexedLastBlock(t *testing.T) {
	for _, n := range []int{200, 20} {
		chain := longChain(t, n)
		last := n - 1
		for _, where := range []string{"data", "record header"} {
			t.Run(fmt.Sprintf("%d blocks, %s", n, where), func(t *testing.T) {
				dir, locs := storeDir(t, chain)
				off := locs[last].end() - 3
				if where == "record header" {
					off = locs[last].off + 1
				}
				flipByte(t, filepath.Join(dir, dataFile), off)
				before := dirState(t, dir)
				s, err := Open(dir, Config{Logger: testLogger(t)})
				if err == nil {
					h := s.Height()
					s.Close()
					t.Fatalf("Open of a damaged acknowledged block succeeded, height %d", h)
				}
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", locs[last].off)) ||
					!strings.Contains(err.Error(), fmt.Sprintf("block %d", last)) || !strings.Contains(err.Error(), "restore") {
					t.Fatalf("Open: %v, want ErrCorrupt naming block %d at offset %d", err, last, locs[last].off)
				}
				after := dirState(t, dir)
				delete(after, lockFile)
				delete(before, lockFile)
				sameState(t, before, after)
			})
		}
	}
}

// The tail that the end-to-end scenario "block store tail torn while
// stopped" leaves (the last 100 bytes of blocks.dat cut off) is not wholly
// inside the file, so no index entry vouches for it: Open still cuts it.
func TestOpenCutsTailCutShort(t *testing.T) {
	for _, n := range []int{200, 20} {
		chain := longChain(t, n)
		dir, locs := storeDir(t, chain)
		path := filepath.Join(dir, dataFile)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, st.Size()-100); err != nil {
			t.Fatal(err)
		}
		keep := 0
		for keep < n && locs[keep].end() <= st.Size()-100 {
			keep++
		}
		s := mustOpen(t, dir)
		if s.Height() != uint64(keep) || s.Recovered().TruncatedAt != locs[keep].off {
			t.Fatalf("%d blocks: height %d, recovery %+v; want %d, cut at %d", n, s.Height(), s.Recovered(), keep, locs[keep].off)
		}
		appendAll(t, s, chain[keep:])
		checkBlocks(t, s, chain)
		s.Close()
	}
}

// An index entry that disagrees with an intact record (here its data
// checksum) is trusted by every Open: Verify names the field and says to
// remove blocks.idx, and removing it does make the next Open read the
// whole chain and rewrite the index. (It used to say "restart memberd to
// rebuild the index", which does not.)
func TestVerifyIndexDisagreesRemoveIndexRebuilds(t *testing.T) {
	chain := longChain(t, 200)
	dir, locs := storeDir(t, chain)
	l := locs[10]
	l.crc ^= 1
	patchFile(t, filepath.Join(dir, indexFile), fileHeaderSize+10*indexEntrySize, appendIndexEntry(nil, l))
	for restart := range 2 {
		s := mustOpen(t, dir)
		_, gerr := s.Get(10)
		verr := s.Verify(context.Background(), nil)
		s.Close()
		if gerr == nil {
			t.Fatalf("open %d: the wrong entry is no longer trusted; this test no longer shows the case", restart)
		}
		if !errors.Is(verr, ErrCorrupt) || !strings.Contains(verr.Error(), "block 10") ||
			!strings.Contains(verr.Error(), "data checksum") || !strings.Contains(verr.Error(), "remove "+filepath.Join(dir, indexFile)) {
			t.Fatalf("open %d: Verify: %v; want the block, the field and the removal of blocks.idx", restart, verr)
		}
	}
	if err := os.Remove(filepath.Join(dir, indexFile)); err != nil {
		t.Fatal(err)
	}
	for restart := range 2 {
		s := mustOpen(t, dir)
		checkBlocks(t, s, chain)
		if err := s.Verify(context.Background(), nil); err != nil {
			t.Fatalf("open %d after removing the index: %v", restart, err)
		}
		s.Close()
	}
	if got := readIndexFile(filepath.Join(dir, indexFile), 1<<40, DefaultMaxBlockBytes); len(got) != len(chain) {
		t.Fatalf("rewritten index holds %d entries, want %d", len(got), len(chain))
	}
}

// VerifyDir checks a stopped store read-only: it reports every kind of
// damage, a torn tail and a wrong index entry, and changes no file.
func TestVerifyDir(t *testing.T) {
	chain := longChain(t, 200)
	check := func(t *testing.T, dir string, wantErr error, want ...string) {
		t.Helper()
		before := dirState(t, dir)
		h, err := VerifyDir(context.Background(), dir, Config{}, nil)
		sameState(t, before, dirState(t, dir))
		if wantErr == nil {
			if err != nil || h != uint64(len(chain)) {
				t.Fatalf("VerifyDir: %d, %v; want %d blocks", h, err, len(chain))
			}
			return
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("VerifyDir: %d, %v; want %v", h, err, wantErr)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("VerifyDir: %v; want it to name %q", err, w)
			}
		}
	}
	t.Run("intact", func(t *testing.T) {
		dir, _ := storeDir(t, chain)
		var last, total int64
		h, err := VerifyDir(context.Background(), dir, Config{}, func(d, tt int64) { last, total = d, tt })
		if err != nil || h != 200 || last != total || total == 0 {
			t.Fatalf("VerifyDir: %d, %v; progress %d of %d", h, err, last, total)
		}
		check(t, dir, nil)
	})
	t.Run("only blocks.dat", func(t *testing.T) {
		dir, _ := storeDir(t, chain)
		os.Remove(filepath.Join(dir, indexFile))
		os.Remove(filepath.Join(dir, lockFile))
		check(t, dir, nil)
	})
	t.Run("missing", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "trade", "blocks")
		_, err := VerifyDir(context.Background(), dir, Config{}, nil)
		if !errors.Is(err, ErrNoStore) || !strings.Contains(err.Error(), filepath.Join(dir, dataFile)) || !strings.Contains(err.Error(), "DATA_DIR/CHANNEL/blocks") {
			t.Fatalf("VerifyDir: %v", err)
		}
		if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("VerifyDir created %s: %v", filepath.Dir(dir), err)
		}
	})
	t.Run("damaged middle block", func(t *testing.T) {
		dir, locs := storeDir(t, chain)
		flipByte(t, filepath.Join(dir, dataFile), locs[20].off+recHeaderSize+3)
		check(t, dir, ErrCorrupt, fmt.Sprintf("offset %d", locs[20].off), "restore")
	})
	t.Run("damaged last block", func(t *testing.T) {
		dir, locs := storeDir(t, chain)
		flipByte(t, filepath.Join(dir, dataFile), locs[199].end()-3)
		check(t, dir, ErrCorrupt, fmt.Sprintf("offset %d", locs[199].off), "block 199", "restore")
	})
	t.Run("torn tail", func(t *testing.T) {
		dir, locs := storeDir(t, chain)
		path := filepath.Join(dir, dataFile)
		if err := os.Truncate(path, locs[199].end()-100); err != nil {
			t.Fatal(err)
		}
		check(t, dir, ErrTornTail, fmt.Sprintf("offset %d", locs[199].off), "after block 198", "next start")
	})
	t.Run("index disagrees", func(t *testing.T) {
		dir, locs := storeDir(t, chain)
		l := locs[10]
		l.n++
		patchFile(t, filepath.Join(dir, indexFile), fileHeaderSize+10*indexEntrySize, appendIndexEntry(nil, l))
		check(t, dir, ErrCorrupt, "block 10", "length", "remove "+filepath.Join(dir, indexFile))
	})
	t.Run("in use", func(t *testing.T) {
		dir, _ := storeDir(t, chain)
		s := mustOpen(t, dir)
		defer s.Close()
		check(t, dir, ErrLocked)
	})
}

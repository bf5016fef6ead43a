package blockstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
)

// FuzzScan feeds arbitrary file contents to the reader. It must not panic
// or allocate from an unchecked length; what it accepts must be a chain of
// intact records of consecutive, hash-linked blocks.
func FuzzScan(f *testing.F) {
	chain := fabricBlocks(f)
	chain = append(chain, nextBlocks(f, chain[2], 2, 1, 30)...)
	file, lastOff := buildStore(f, chain)
	f.Add(file)
	f.Add(file[:lastOff+7])
	f.Add(file[:fileHeaderSize])
	f.Add(append(bytes.Clone(file[:lastOff]), 0, 0, 0, 0))
	damaged := bytes.Clone(file)
	damaged[fileHeaderSize+30] ^= 1
	f.Add(damaged)
	f.Add([]byte("mbrblks\x00garbage"))
	f.Fuzz(func(t *testing.T, file []byte) {
		if checkFileHeader(file) != nil {
			return
		}
		const maxLen = 1 << 20
		r := bytes.NewReader(file)
		res, err := scan(r, fileHeaderSize, 0, int64(len(file)), maxLen, block.VerifyHeaderChain)
		if err != nil {
			var c *errCorrupt
			if !errors.As(err, &c) || c.off < fileHeaderSize || c.off >= int64(len(file)) {
				t.Fatalf("scan error %v is not a corruption inside the file", err)
			}
			return
		}
		off := int64(fileHeaderSize)
		var prev *common.BlockHeader
		for i, l := range res.locs {
			if l.off != off || l.n == 0 || l.n > maxLen || l.end() > int64(len(file)) {
				t.Fatalf("record %d at %d (%d bytes) does not follow %d", i, l.off, l.n, off)
			}
			data := file[l.off+recHeaderSize : l.end()]
			if crc(data) != l.crc {
				t.Fatalf("record %d accepted with a bad checksum", i)
			}
			h, err := blockHeader(data)
			if err != nil || h.Number != uint64(i) {
				t.Fatalf("record %d: header %v, %v", i, h, err)
			}
			if prev != nil && block.VerifyHeaderChain(h, prev) != nil {
				t.Fatalf("record %d does not chain", i)
			}
			prev, off = h, l.end()
		}
		if res.tail != off {
			t.Fatalf("tail %d, records end at %d", res.tail, off)
		}
		// Whatever follows the tail holds no intact record (else it was not torn).
		if next, _ := nextIntact(r, res.tail+1, int64(len(file)), maxLen); next >= 0 && res.tail < int64(len(file)) {
			t.Fatalf("torn tail at %d hides an intact record at %d", res.tail, next)
		}
	})
}

// FuzzOpen runs the whole Open path (real file, truncation) on mutations of
// a valid store, then appends and reopens.
func FuzzOpen(f *testing.F) {
	chain := fabricBlocks(f)
	file, lastOff := buildStore(f, chain)
	f.Add(file)
	f.Add(file[:lastOff+100])
	f.Fuzz(func(t *testing.T, content []byte) {
		dir := t.TempDir()
		writeStore(t, dir, content)
		s, err := Open(dir, Config{MaxBlockBytes: 1 << 20})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v (want success or ErrCorrupt)", err)
			}
			return
		}
		defer s.Close()
		h := s.Height()
		var prev *common.Block
		for i := range h {
			b, err := s.Get(i)
			if errors.Is(err, ErrCorrupt) {
				// Open checks checksums, numbers and the header chain, not
				// every block body; Get reports a body that does not decode.
				return
			}
			if err != nil {
				t.Fatalf("Get(%d) after a successful Open: %v", i, err)
			}
			if prev != nil {
				if err := block.VerifyHeaderChain(b.Header, prev.Header); err != nil {
					t.Fatal(err)
				}
			}
			prev = b
		}
		next := chain[0]
		if prev != nil {
			next = block.New(h, block.HeaderHash(prev.Header), nil)
		}
		if err := s.Append(next); err != nil {
			t.Fatalf("Append after recovery: %v", err)
		}
		s.Close()
		s2, err := Open(dir, Config{MaxBlockBytes: 1 << 20})
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer s2.Close()
		if s2.Height() != h+1 || s2.Recovered() != (Recovery{}) {
			t.Fatalf("reopen: height %d recovery %+v, want %d and a clean file", s2.Height(), s2.Recovered(), h+1)
		}
	})
}

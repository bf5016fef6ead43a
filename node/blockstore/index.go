package blockstore

// Index file DIR/blocks.idx (version 1), a cache of the record offsets that
// lets Open check only the tail of blocks.dat instead of reading the whole
// chain; all integers little-endian:
//
//	file header, 16 bytes:
//	  magic   [8]byte  "mbrbidx\x00"
//	  version uint32   1
//	  crc     uint32   CRC-32C of the 12 bytes before it
//	entries, one per block, in block-number order starting at block 0:
//	  off     uint64   offset of the block's record in blocks.dat
//	  length  uint32   the record's data length
//	  dcrc    uint32   the record's data checksum
//	  ecrc    uint32   CRC-32C of the 16 bytes before it
//
// An entry is written after its block is fdatasync'ed in blocks.dat, and the
// index itself is never fsynced: it is only ever trusted as far as it is
// consistent (checksums, each record starting where the previous one ends,
// inside blocks.dat), and Open checks the last tailCheck indexed blocks and
// everything after them as a full scan would. Anything the index cannot
// vouch for is scanned; any doubt falls back to the full scan, whose
// verdict is final. A damaged last record that the index lists (its entry
// lies wholly inside blocks.dat) was acknowledged: Open reports it instead
// of cutting it as a torn tail (vouched). Damage in the middle of blocks.dat is then found by Get
// (each read checks the block's checksum) and by Verify, not by Open.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

const (
	indexFile      = "blocks.idx"
	indexMagic     = "mbrbidx\x00"
	indexVersion   = 1
	indexEntrySize = 20
	// tailCheck is how many indexed blocks at the end of the chain Open
	// reads and checks (checksums, numbers, hash chain) besides the
	// blocks the index does not cover; fewer when they hold more than
	// tailCheckBytes, but always the last two (the last block and its
	// link to the one before).
	tailCheck      = 64
	tailCheckBytes = 4 << 20
)

// tailStart returns the first indexed block Open checks.
func tailStart(indexed []loc) int {
	n := len(indexed)
	j := max(n-tailCheck, 0)
	for j < n-2 && indexed[n-1].end()-indexed[j].off > tailCheckBytes {
		j++
	}
	return j
}

func indexHeader() []byte { return magicHeader(indexMagic, indexVersion) }

func appendIndexEntry(dst []byte, l loc) []byte {
	var e [indexEntrySize]byte
	binary.LittleEndian.PutUint64(e[0:], uint64(l.off))
	binary.LittleEndian.PutUint32(e[8:], l.n)
	binary.LittleEndian.PutUint32(e[12:], l.crc)
	binary.LittleEndian.PutUint32(e[16:], crc(e[:16]))
	return append(dst, e[:]...)
}

// readIndex returns the consistent prefix of the index in r: entries with
// intact checksums, the first at fileHeaderSize, each following the one
// before, all ending within dataSize and no longer than maxLen. A missing
// or foreign header gives none.
func readIndex(r io.Reader, dataSize int64, maxLen uint32, sizeHint int64) ([]loc, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	h := make([]byte, fileHeaderSize)
	if _, err := io.ReadFull(br, h); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil
		}
		return nil, err
	}
	if string(h) != string(indexHeader()) {
		return nil, nil
	}
	// Sized from the file (a garbage file of the same size would get no
	// further than its first entries, so the hint is capped).
	locs := make([]loc, 0, min(max(sizeHint-fileHeaderSize, 0)/indexEntrySize, 1<<24))
	next := int64(fileHeaderSize)
	var e [indexEntrySize]byte
	for {
		if _, err := io.ReadFull(br, e[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return locs, nil
			}
			return nil, err
		}
		if binary.LittleEndian.Uint32(e[16:]) != crc(e[:16]) {
			return locs, nil
		}
		l := loc{off: int64(binary.LittleEndian.Uint64(e[0:])), n: binary.LittleEndian.Uint32(e[8:]), crc: binary.LittleEndian.Uint32(e[12:])}
		if l.off != next || l.n == 0 || l.n > maxLen || l.end() > dataSize {
			return locs, nil
		}
		locs = append(locs, l)
		next = l.end()
	}
}

// openIndex opens (creating) the index and returns it with its consistent
// entries. An index that cannot be opened or read is not an error: the
// store then scans the whole file and runs without one.
func (s *Store) openIndex(path string, dataSize int64) (*os.File, []loc) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		s.log.Warn("block store: index unusable, every start reads the whole chain", "path", path, "err", err)
		return nil, nil
	}
	locs, err := readIndexOf(f, dataSize, s.cfg.maxBlock())
	if err != nil {
		s.log.Warn("block store: index unreadable, reading the whole chain", "path", path, "err", err)
		locs = nil
	}
	return f, locs
}

// readIndexOf is readIndex of the index file f.
func readIndexOf(f *os.File, dataSize int64, maxLen uint32) ([]loc, error) {
	var hint int64
	if st, err := f.Stat(); err == nil {
		hint = min(st.Size(), dataSize/recHeaderSize*indexEntrySize) // bounded by what blocks.dat can hold
	}
	return readIndex(io.NewSectionReader(f, 0, 1<<62), dataSize, maxLen, hint)
}

// rewriteIndex makes the index hold exactly locs, keeping its first keep
// entries (already on disk and equal to locs[:keep]). When it drops
// entries (blocks.dat was cut back) or replaces them (mismatch says the
// index did not match blocks.dat), it fsyncs the index, so that a power
// loss does not bring back entries of records that blocks.dat no longer
// holds, which new records could later line up with.
func (s *Store) rewriteIndex(locs []loc, keep int, mismatch bool) {
	if s.idx == nil {
		return
	}
	buf := make([]byte, 0, fileHeaderSize+(len(locs)-keep)*indexEntrySize)
	at := int64(fileHeaderSize + keep*indexEntrySize)
	if keep == 0 {
		buf, at = append(buf, indexHeader()...), 0
	}
	for _, l := range locs[keep:] {
		buf = appendIndexEntry(buf, l)
	}
	st, err := s.idx.Stat()
	cut := err == nil && st.Size() > at+int64(len(buf))
	if err == nil {
		err = s.idx.Truncate(at)
	}
	if err == nil {
		_, err = s.idx.WriteAt(buf, at)
	}
	if err == nil && (cut || mismatch) {
		err = s.idx.Sync()
	}
	if err != nil {
		s.indexFailed(err)
		return
	}
	s.idxSize = at + int64(len(buf))
}

// indexAppend adds the entries of just-appended records; called with
// appendMu held, after their fdatasync.
func (s *Store) indexAppend(locs []loc) {
	if s.idx == nil || s.idxFailed {
		return
	}
	buf := make([]byte, 0, len(locs)*indexEntrySize)
	for _, l := range locs {
		buf = appendIndexEntry(buf, l)
	}
	if _, err := s.idx.WriteAt(buf, s.idxSize); err != nil {
		s.indexFailed(err)
		return
	}
	s.idxSize += int64(len(buf))
}

// indexFailed stops index writes until the next Open, which rescans what
// the index misses. Blocks stay durable: the index is only a cache.
func (s *Store) indexFailed(err error) {
	s.idxFailed = true
	s.log.Warn("block store: index write failed; the next start reads the blocks it misses", "path", s.idx.Name(), "err", err)
}

// progressReader reports how far a scan has read and stops it when ctx
// ends.
type progressReader struct {
	r    io.ReaderAt
	ctx  context.Context
	done func(upTo int64)
}

func (p progressReader) ReadAt(b []byte, off int64) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.r.ReadAt(b, off)
	p.done(off + int64(n))
	return n, err
}

// progressLog returns a progress function that logs msg with the share of
// size read, at most every interval.
func progressLog(log func(msg string, args ...any), msg, path string, size int64, every time.Duration) func(int64) {
	start := time.Now()
	last := start
	return func(upTo int64) {
		if now := time.Now(); now.Sub(last) >= every {
			last = now
			log(msg, "path", path, "read_bytes", upTo, "total_bytes", size,
				"percent", fmt.Sprintf("%.1f", 100*float64(upTo)/float64(max(size, 1))), "seconds", now.Sub(start).Seconds())
		}
	}
}

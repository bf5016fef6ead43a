package blockstore

// File format of blocks.dat (version 1), all integers little-endian:
//
//	file header, 16 bytes:
//	  magic   [8]byte  "mbrblks\x00"
//	  version uint32   1
//	  crc     uint32   CRC-32C (Castagnoli) of the 12 bytes before it
//	records, one per block, in block-number order starting at block 0:
//	  length  uint32   length of data, 1..MaxBlockBytes
//	  dcrc    uint32   CRC-32C of data
//	  hcrc    uint32   CRC-32C of the 8 bytes before it (length and dcrc)
//	  data    [length]byte  the block, a marshalled common.Block
//
// The header checksum lets a reader judge a length before trusting it (no
// allocation from an unchecked length) and find the next intact record after
// damage, which is how recovery tells a torn tail from corruption in the
// middle (see scan). One limit of that rule: if the torn last record's own
// data contains bytes that form an intact record (an envelope crafted to),
// Open reports corruption instead of truncating; the operator then removes
// the tail by hand or restores from a peer. Nothing is ever lost silently.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

const (
	fileMagic      = "mbrblks\x00"
	fileVersion    = 1
	fileHeaderSize = 16
	recHeaderSize  = 12
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func fileHeader() []byte { return magicHeader(fileMagic, fileVersion) }

// magicHeader is the 16-byte header of a file of ours: magic, version and
// their checksum.
func magicHeader(magic string, version uint32) []byte {
	h := make([]byte, fileHeaderSize)
	copy(h, magic)
	binary.LittleEndian.PutUint32(h[8:], version)
	binary.LittleEndian.PutUint32(h[12:], crc(h[:12]))
	return h
}

func checkFileHeader(h []byte) error {
	if len(h) < fileHeaderSize || string(h[:8]) != fileMagic {
		return errors.New("not a memberd block file (bad magic)")
	}
	if binary.LittleEndian.Uint32(h[12:]) != crc(h[:12]) {
		return errors.New("file header checksum mismatch")
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != fileVersion {
		return fmt.Errorf("block file version %d, this memberd reads version %d: use a matching memberd", v, fileVersion)
	}
	return nil
}

// appendRecord appends the framed record of data to dst.
func appendRecord(dst, data []byte) []byte {
	var h [recHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(data)))
	binary.LittleEndian.PutUint32(h[4:], crc(data))
	binary.LittleEndian.PutUint32(h[8:], crc(h[:8]))
	return append(append(dst, h[:]...), data...)
}

// parseRecHeader returns the data length and data checksum of a record
// header, and whether the header is intact and its length plausible.
func parseRecHeader(h []byte, maxLen uint32) (n, dcrc uint32, ok bool) {
	if binary.LittleEndian.Uint32(h[8:]) != crc(h[:8]) {
		return 0, 0, false
	}
	n = binary.LittleEndian.Uint32(h[0:])
	return n, binary.LittleEndian.Uint32(h[4:]), n > 0 && n <= maxLen
}

// loc is where a record's data lives in the file.
type loc struct {
	off int64 // offset of the record header
	n   uint32
	crc uint32
}

func (l loc) end() int64 { return l.off + recHeaderSize + int64(l.n) }

// scanResult is what scan found in a block file.
type scanResult struct {
	locs []loc
	last *common.BlockHeader // header of the last good block, nil if none
	// tail is the offset where the intact records end; when tail < size the
	// bytes after it are a torn tail that the caller truncates.
	tail int64
	// from is where the scan started reading (set by the caller).
	from int64
}

// errCorrupt carries the offset of damage that is not a torn tail.
type errCorrupt struct {
	off    int64
	reason string
}

func (e *errCorrupt) Error() string { return fmt.Sprintf("offset %d: %s", e.off, e.reason) }

// report is the error for the operator: ErrCorrupt, the file, the offset,
// what is wrong and the fix.
func (e *errCorrupt) report(path string) error {
	return fmt.Errorf("%w: %s at offset %d: %s; restore the store from a peer or backup", ErrCorrupt, path, e.off, e.reason)
}

// scan reads the records of a block file of the given size from offset
// start, where the record of block first begins (fileHeaderSize and 0 for
// the whole file), and checks them: checksums, block numbers first,
// first+1,... and the hash chain of their headers (from the first record
// read on: that record is the anchor, checked only by its checksums and
// number). It stops at the first damaged record; the damage
// is a torn tail if no intact record starts anywhere after it (a crash can
// only tear the last, unsynced append), otherwise it is corruption and scan
// returns an *errCorrupt naming its offset.
func scan(r io.ReaderAt, start int64, first uint64, size int64, maxLen uint32, chain func(h, prev *common.BlockHeader) error) (*scanResult, error) {
	res := &scanResult{tail: start}
	var hdr [recHeaderSize]byte
	var buf []byte
	off := start
	// Records are read sequentially through one buffer (few syscalls); r is
	// used directly only to look past damage.
	br := bufio.NewReaderSize(io.NewSectionReader(r, off, size-off), 1<<20)
	for off < size {
		bad := ""
		if size-off < recHeaderSize {
			bad = "partial record header"
		} else if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return nil, err
		}
		var n, dcrc uint32
		if bad == "" {
			var ok bool
			if n, dcrc, ok = parseRecHeader(hdr[:], maxLen); !ok {
				bad = "record header checksum mismatch or impossible length"
			} else if off+recHeaderSize+int64(n) > size {
				bad = fmt.Sprintf("record of %d bytes runs past the end of the file", n)
			}
		}
		if bad == "" {
			if cap(buf) < int(n) {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			if _, err := io.ReadFull(br, buf); err != nil {
				return nil, err
			}
			if crc(buf) != dcrc {
				bad = "block data checksum mismatch"
			}
		}
		var h *common.BlockHeader
		if bad == "" {
			var err error
			if h, err = blockHeader(buf); err != nil {
				return nil, &errCorrupt{off, fmt.Sprintf("record with a valid checksum holds no block header: %v", err)}
			}
			if want := first + uint64(len(res.locs)); h.Number != want {
				return nil, &errCorrupt{off, fmt.Sprintf("record holds block %d where block %d belongs", h.Number, want)}
			}
			if res.last != nil {
				if err := chain(h, res.last); err != nil {
					return nil, &errCorrupt{off, err.Error()}
				}
			}
		}
		if bad != "" {
			next, err := nextIntact(r, off+1, size, maxLen)
			if err != nil {
				return nil, err
			}
			if next >= 0 {
				return nil, &errCorrupt{off, fmt.Sprintf("%s (an intact record follows at offset %d, so this is not a torn tail)", bad, next)}
			}
			return res, nil // torn tail from off to size
		}
		res.locs = append(res.locs, loc{off: off, n: n, crc: dcrc})
		res.last = h
		off += recHeaderSize + int64(n)
		res.tail = off
	}
	return res, nil
}

// nextIntact returns the offset of the first intact record (header and data
// checksums valid, within the file) at or after from, or -1.
func nextIntact(r io.ReaderAt, from, size int64, maxLen uint32) (int64, error) {
	const chunk = 1 << 20
	buf := make([]byte, chunk+recHeaderSize-1)
	var data []byte
	for base := from; base+recHeaderSize <= size; base += chunk {
		m := min(int64(len(buf)), size-base)
		if _, err := r.ReadAt(buf[:m], base); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := int64(0); i+recHeaderSize <= m && i < chunk; i++ {
			n, dcrc, ok := parseRecHeader(buf[i:i+recHeaderSize], maxLen)
			at := base + i
			if !ok || at+recHeaderSize+int64(n) > size {
				continue
			}
			if cap(data) < int(n) {
				data = make([]byte, n)
			}
			data = data[:n]
			if _, err := r.ReadAt(data, at+recHeaderSize); err != nil {
				return 0, err
			}
			if crc(data) == dcrc {
				return at, nil
			}
		}
	}
	return -1, nil
}

// blockHeader decodes only the header (field 1) of a marshalled common.Block.
func blockHeader(raw []byte) (*common.BlockHeader, error) {
	h := new(common.BlockHeader)
	found := false
	for len(raw) > 0 {
		num, typ, tl := protowire.ConsumeTag(raw)
		if tl < 0 {
			return nil, protowire.ParseError(tl)
		}
		raw = raw[tl:]
		vl := protowire.ConsumeFieldValue(num, typ, raw)
		if vl < 0 {
			return nil, protowire.ParseError(vl)
		}
		if num == 1 && typ == protowire.BytesType {
			// A repeated message field merges, as in proto.Unmarshal.
			v, _ := protowire.ConsumeBytes(raw)
			if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(bytes.Clone(v), h); err != nil {
				return nil, err
			}
			found = true
		}
		raw = raw[vl:]
	}
	if !found {
		return nil, errors.New("block has no header")
	}
	return h, nil
}

package raftlog

// Record format shared by the write-ahead log segments and the snapshot files.
// Pure code: no I/O.
//
//	offset  size  field
//	0       4     n: length of the body in bytes, little endian (1 <= n <= max)
//	4       4     CRC-32C (Castagnoli) of the body, little endian
//	8       n     body: 1 byte record type, then n-1 bytes of payload
//
// A segment is a sequence of records and nothing else; its first record is a
// recMeta naming the format version, the node ID and the cluster.
//
// Torn tail: a crash may leave the last record of the newest segment partly
// written (short, garbage, or zero-filled by the file system). The decoder
// reports where the valid prefix ends when the bad record cannot be followed
// by a valid one: its header is incomplete; or its length is plausible
// (1..max) and the record reaches or passes the end of the data, or only
// zeros follow it (a file system may zero-fill blocks a crash left
// unwritten); or everything from the bad record to the end is zero.
// Any other bad record is corruption in the middle of the log (ErrCorrupt):
// recovery stops and says where, instead of silently dropping records that
// raft may have acknowledged.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	recordHeaderLen = 8
	// walVersion is written in every segment's meta record.
	walVersion = 1
)

// Record types.
const (
	recMeta     byte = 1 // version(1) nodeID(8) clusterLen(2) cluster
	recState    byte = 2 // raftpb.HardState
	recEntry    byte = 3 // raftpb.Entry
	recSnapshot byte = 4 // raftpb.Snapshot (snapshot files only)
	// recInstall: index(8) term(8), big endian. The log was replaced by the
	// snapshot at that index, installed from the leader (segments only;
	// wal.go markInstalled).
	recInstall byte = 5
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// appendRecord appends one record to dst.
func appendRecord(dst []byte, typ byte, payload []byte) []byte {
	n := 1 + len(payload)
	var hdr [recordHeaderLen + 1]byte
	binary.LittleEndian.PutUint32(hdr[0:4], uint32(n))
	crc := crc32.Update(0, crcTable, []byte{typ})
	crc = crc32.Update(crc, crcTable, payload)
	binary.LittleEndian.PutUint32(hdr[4:8], crc)
	hdr[8] = typ
	dst = append(dst, hdr[:]...)
	return append(dst, payload...)
}

// record is one decoded record; payload aliases the input buffer.
type record struct {
	typ     byte
	payload []byte
	off     int64 // offset of the record header in its file
}

// decodeRecords decodes buf. It returns the records of the valid prefix and
// validEnd, the length of that prefix. validEnd < len(buf) with a nil error
// means a torn tail starting at validEnd. A non-nil error (wrapping
// ErrCorrupt) means a bad record that is not a torn tail; records and
// validEnd then describe what precedes it.
func decodeRecords(buf []byte, maxBody int) (recs []record, validEnd int, err error) {
	off := 0
	for off < len(buf) {
		rest := buf[off:]
		if len(rest) < recordHeaderLen {
			return recs, off, nil // torn header
		}
		n := int(binary.LittleEndian.Uint32(rest[0:4]))
		want := binary.LittleEndian.Uint32(rest[4:8])
		bad := ""
		switch {
		case n == 0 || n > maxBody:
			bad = fmt.Sprintf("invalid record length %d", n)
		case n > len(rest)-recordHeaderLen:
			return recs, off, nil // record runs past the end: torn
		default:
			body := rest[recordHeaderLen : recordHeaderLen+n]
			if crc32.Checksum(body, crcTable) != want {
				bad = "checksum mismatch"
			}
		}
		if bad != "" {
			if allZero(rest) || (n > 0 && n <= maxBody && allZero(rest[recordHeaderLen+n:])) {
				return recs, off, nil
			}
			return recs, off, fmt.Errorf("%w: %s at offset %d", ErrCorrupt, bad, off)
		}
		body := rest[recordHeaderLen : recordHeaderLen+n]
		recs = append(recs, record{typ: body[0], payload: body[1:], off: int64(off)})
		off += recordHeaderLen + n
	}
	return recs, off, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// meta is the payload of a recMeta record.
type meta struct {
	version uint8
	nodeID  uint64
	cluster string
}

func (m meta) marshal() []byte {
	b := make([]byte, 0, 11+len(m.cluster))
	b = append(b, m.version)
	b = binary.BigEndian.AppendUint64(b, m.nodeID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.cluster)))
	return append(b, m.cluster...)
}

var errBadMeta = errors.New("malformed segment meta record")

func parseMeta(b []byte) (meta, error) {
	if len(b) < 11 {
		return meta{}, errBadMeta
	}
	m := meta{version: b[0], nodeID: binary.BigEndian.Uint64(b[1:9])}
	n := int(binary.BigEndian.Uint16(b[9:11]))
	if len(b) != 11+n {
		return meta{}, errBadMeta
	}
	m.cluster = string(b[11:])
	return m, nil
}

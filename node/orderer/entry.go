package orderer

// Raft entry wire format (version 1). Every entry this package proposes:
//
//	byte 0   version (1)
//	byte 1   type: 0 = no-op (a new leader's barrier), 1 = block,
//	         2 = config block
//	rest     type 1: a marshalled common.Block, unsigned (5 empty metadata
//	         slots); each node signs its own copy when it applies the entry
//	         type 2: 8 bytes policy version (big endian), 32 bytes policy
//	         hash (SHA-256 of the policy document), then a block as in type
//	         1 whose one envelope is the CONFIG transaction derived from the
//	         config in force and that policy version (configtx.go)
//
// Unknown versions and types decode to entryUnknown and are skipped by apply,
// so that a newer node's entries never stop an older one. (A node older than
// type 2 skips a config block, and with it every later block, which no
// longer chains to its store: upgrade every consenter before applying a
// policy version that changes the channel config.)

import (
	"encoding/binary"
	"fmt"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

const entryVersion = 1

type entryType byte

const (
	entryNoop    entryType = 0
	entryBlock   entryType = 1
	entryConfig  entryType = 2
	entryUnknown entryType = 255
)

var noopEntry = []byte{entryVersion, byte(entryNoop)}

var entryMarshal = proto.MarshalOptions{Deterministic: true}

// encodeBlockEntry marshals b straight after the 2-byte prefix (one
// allocation of the final size, no copy: blocks are large).
func encodeBlockEntry(b *common.Block) ([]byte, error) {
	if b.GetHeader() == nil || b.GetData() == nil || b.GetMetadata() == nil {
		return nil, fmt.Errorf("%w: block entry needs header, data and metadata", block.ErrMalformed)
	}
	buf := make([]byte, 2, 2+entryMarshal.Size(b))
	buf[0], buf[1] = entryVersion, byte(entryBlock)
	out, err := entryMarshal.MarshalAppend(buf, b)
	if err != nil {
		return nil, fmt.Errorf("%w: marshal block: %v", block.ErrMalformed, err)
	}
	return out, nil
}

// configHeaderSize is the policy version and hash before a config block.
const configHeaderSize = 8 + len(policy.Hash{})

// encodeConfigEntry is encodeBlockEntry for a config block derived from
// policy version ver with hash h.
func encodeConfigEntry(b *common.Block, ver uint64, h policy.Hash) ([]byte, error) {
	if b.GetHeader() == nil || b.GetData() == nil || b.GetMetadata() == nil {
		return nil, fmt.Errorf("%w: config entry needs header, data and metadata", block.ErrMalformed)
	}
	buf := make([]byte, 2+configHeaderSize, 2+configHeaderSize+entryMarshal.Size(b))
	buf[0], buf[1] = entryVersion, byte(entryConfig)
	binary.BigEndian.PutUint64(buf[2:], ver)
	copy(buf[10:], h[:])
	out, err := entryMarshal.MarshalAppend(buf, b)
	if err != nil {
		return nil, fmt.Errorf("%w: marshal config block: %v", block.ErrMalformed, err)
	}
	return out, nil
}

// configSource is the policy version a config entry names.
type configSource struct {
	version uint64
	hash    policy.Hash
}

// decodeConfigEntry returns the policy version and the block of a config entry.
func decodeConfigEntry(data []byte) (configSource, *common.Block, error) {
	var src configSource
	if len(data) < 2+configHeaderSize || data[0] != entryVersion || entryType(data[1]) != entryConfig {
		return src, nil, fmt.Errorf("%w: config entry too short", block.ErrMalformed)
	}
	src.version = binary.BigEndian.Uint64(data[2:])
	copy(src.hash[:], data[10:2+configHeaderSize])
	b, err := block.Unmarshal(data[2+configHeaderSize:])
	if err != nil {
		return src, nil, fmt.Errorf("config entry: %w", err)
	}
	return src, b, nil
}

// decodeEntry returns the entry's type and, for a block, the block.
func decodeEntry(data []byte) (entryType, *common.Block, error) {
	if len(data) < 2 || data[0] != entryVersion {
		return entryUnknown, nil, nil
	}
	switch entryType(data[1]) {
	case entryNoop:
		return entryNoop, nil, nil
	case entryBlock:
		b, err := block.Unmarshal(data[2:])
		if err != nil {
			return entryBlock, nil, fmt.Errorf("block entry: %w", err)
		}
		return entryBlock, b, nil
	case entryConfig:
		_, b, err := decodeConfigEntry(data)
		return entryConfig, b, err
	default:
		return entryUnknown, nil, nil
	}
}

// peekBlockNumber reads Header.Number of a block entry without decoding the
// block (Block field 1 = header, BlockHeader field 1 = number). It is only a
// cache key: the caller compares the whole entry before trusting it.
func peekBlockNumber(data []byte) (uint64, bool) {
	if len(data) < 2 || data[0] != entryVersion || entryType(data[1]) != entryBlock {
		return 0, false
	}
	b := data[2:]
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			h, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, false
			}
			for len(h) > 0 {
				f, t, m := protowire.ConsumeTag(h)
				if m < 0 {
					return 0, false
				}
				h = h[m:]
				if f == 1 && t == protowire.VarintType {
					v, k := protowire.ConsumeVarint(h)
					return v, k >= 0
				}
				k := protowire.ConsumeFieldValue(f, t, h)
				if k < 0 {
					return 0, false
				}
				h = h[k:]
			}
			return 0, true // number 0 is omitted in proto3
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
	}
	return 0, false
}

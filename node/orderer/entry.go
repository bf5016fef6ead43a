package orderer

// Raft entry wire format (version 1). Every entry this package proposes:
//
//	byte 0   version (1)
//	byte 1   type: 0 = no-op (a new leader's barrier), 1 = block
//	rest     type 1: a marshalled common.Block, unsigned (5 empty metadata
//	         slots); each node signs its own copy when it applies the entry
//
// Unknown versions and types decode to entryUnknown and are skipped by apply,
// so that a newer node's entries never stop an older one.

import (
	"fmt"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

const entryVersion = 1

type entryType byte

const (
	entryNoop    entryType = 0
	entryBlock   entryType = 1
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

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

func encodeBlockEntry(b *common.Block) ([]byte, error) {
	raw, err := block.Marshal(b)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 2+len(raw))
	out[0], out[1] = entryVersion, byte(entryBlock)
	copy(out[2:], raw)
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

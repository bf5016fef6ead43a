package orderer

// Blocks a consenter new to the channel must not sign. A stock Fabric peer
// checks each block's SIGNATURES against the channel config in force
// before that block (for a CONFIG block, the config it replaces), and
// refuses for good a block it cannot verify. A consenter whose org the
// policy added after the genesis block is an orderer org only after the
// CONFIG block that adds it: its signature on that block, or on any block
// before it, is refused by every stock peer that pulls the block from it
// (the new member's own peer first, which starts from the genesis block).
// Fabric's etcdraft avoids it by having a new consenter replicate the chain
// up to that CONFIG block from the others. Here such a node applies those
// blocks from the raft log like any other, but stores the copy another
// consenter signed, fetched with Config.Fetcher; its header must be the
// one the raft log gives.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
)

// signCheck caches whether the signing identity id may sign blocks under
// the channel config ch (apply's goroutine only).
type signCheck struct {
	ch *channelconfig.Channel
	id *signingIdentity
	ok bool
}

// maySign reports whether a stock peer accepts this node's signature on
// the next block: false only while the node's org is no orderer org of
// the config in force (ErrSignerOrgMissing) and a Fetcher can get another
// consenter's copy. Any other verdict of CheckSigner keeps the node
// signing, as New and SetIdentity decided.
func (n *Node) maySign() bool {
	if n.cfg.skipSignerCheck || n.cfg.Fetcher == nil {
		return true
	}
	ch, id := n.ChannelConfig(), n.signing.Load()
	if c := n.signOK; c.ch == ch && c.id == id {
		return c.ok
	}
	err := CheckSigner(ch, id.signer, id.identity, n.cfg.Now())
	ok := !errors.Is(err, ErrSignerOrgMissing)
	if !ok {
		n.log.Info("this node's org is no orderer org of the channel config in force yet: storing the blocks other consenters signed until the CONFIG block that adds it",
			"last_config", n.LastConfig(), "err", err)
	}
	n.signOK = signCheck{ch: ch, id: id, ok: ok}
	return ok
}

// fetchSigned returns another consenter's copy of block b (as the raft
// log gives it: header and data), retrying every second until one comes
// or ctx ends.
func (n *Node) fetchSigned(ctx context.Context, b *common.Block) (*common.Block, error) {
	num, want := b.Header.Number, block.HeaderHash(b.Header)
	for tries := 0; ; tries++ {
		var got *common.Block
		err := n.cfg.Fetcher.FetchBlocks(ctx, num, num, func(raw []byte) error {
			fb, err := block.Unmarshal(raw)
			if err != nil {
				return err
			}
			if !bytes.Equal(block.HeaderHash(fb.Header), want) || !bytes.Equal(fb.Header.DataHash, block.DataHash(fb.Data)) {
				return fmt.Errorf("%w: block %d from a peer differs from the raft log's", ErrCatchUp, num)
			}
			if _, err := block.Signatures(fb); err != nil {
				return fmt.Errorf("%w: block %d from a peer: %w", ErrCatchUp, num, err)
			}
			got = fb
			return nil
		})
		if got != nil {
			return got, nil
		}
		if tries == 0 || tries%30 == 0 {
			n.log.Warn("cannot get another consenter's copy of a block this node may not sign yet; retrying", "block", num, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: block %d: %w", ErrCatchUp, num, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

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
	"github.com/memberd/memberd/policy"
)

// signCheck caches whether the signing identity id may sign blocks under
// the channel config ch and policy pol (apply's goroutine only).
type signCheck struct {
	ch  *channelconfig.Channel
	id  *signingIdentity
	pol *policy.Policy
	ok  bool
}

// maySign reports whether this node signs the next block itself: false
// only while its org is no orderer org of the config in force
// (ErrSignerOrgMissing), a Fetcher can get another consenter's copy, and
// another consenter of the policy belongs to an orderer org of that config
// (so that a copy stock peers accept exists: when no consenter can sign
// one, e.g. every genesis consenter was replaced without CONFIG blocks,
// the node signs, as before, rather than wait for ever). Any other verdict
// of CheckSigner keeps the node signing, as New and SetIdentity decided.
func (n *Node) maySign() bool {
	if n.cfg.skipSignerCheck || n.cfg.Fetcher == nil {
		return true
	}
	ch, id, pol := n.ChannelConfig(), n.signing.Load(), n.cfg.Policy()
	if c := n.signOK; c.ch == ch && c.id == id && c.pol == pol {
		return c.ok
	}
	err := CheckSigner(ch, id.signer, id.identity, n.cfg.Now())
	ok := !errors.Is(err, ErrSignerOrgMissing)
	if !ok {
		if signer := otherSigner(ch, pol, id.identity); signer == "" {
			ok = true
			n.log.Warn("this node's org is no orderer org of the channel config in force, and no other consenter's is: it signs blocks that stock Fabric peers refuse", "err", err)
		} else {
			n.log.Info("this node's org is no orderer org of the channel config in force yet: storing the blocks other consenters signed until a CONFIG block adds it",
				"last_config", n.LastConfig(), "signer", signer, "err", err)
		}
	}
	n.signOK = signCheck{ch: ch, id: id, pol: pol, ok: ok}
	return ok
}

// otherSigner returns a consenter member of pol, other than the one of
// identity, whose MSP is an orderer org of ch ("" if none).
func otherSigner(ch *channelconfig.Channel, pol *policy.Policy, identity []byte) string {
	if pol == nil {
		return ""
	}
	self, _, _ := block.CreatorCertificate(identity)
	for _, m := range pol.Consenters() {
		if m.MSPID == self {
			continue
		}
		for _, o := range ch.Config.OrdererOrgs {
			if o.MSPID == m.MSPID {
				return m.ID
			}
		}
	}
	return ""
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

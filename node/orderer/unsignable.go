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
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
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
// log gives it: header and data, signatures checkCopy accepts), retrying
// every second until one comes or ctx ends. Which peer a retry asks is
// the Fetcher's choice (a BlockFollower, such as DeliverFetcher, goes
// through copyOf's stream instead, which switches peer itself).
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
			if err := n.checkCopy(fb); err != nil {
				return err
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

// checkCopy checks the signatures of another consenter's copy fb of the
// block apply stores next, as a stock peer does: under the channel config
// in force before it (n.ChannelConfig(), the one maySign decided with),
// some signature must verify and its signer satisfy
// /Channel/Orderer/BlockValidation. A copy that fails (e.g. signed by a
// consenter whose org is no orderer org yet, an older build that signs
// anyway) would be refused by every stock peer for good: it is logged and
// counted, and the caller asks another peer.
func (n *Node) checkCopy(fb *common.Block) error {
	num := fb.Header.Number
	sds, err := block.Signatures(fb)
	if err == nil {
		err = acceptedSignature(n.ChannelConfig(), sds)
	}
	if err != nil {
		n.cfg.Metrics.copyRefused()
		n.log.Warn("a peer's copy of a block has no signature that the channel config in force accepts: asking another peer", "block", num, "err", err)
		return fmt.Errorf("%w: block %d from a peer: %w", ErrCatchUp, num, err)
	}
	return nil
}

// acceptedSignature returns nil if one of sds is a valid signature by an
// identity that may sign blocks under ch (BlockValidation is ANY Writers
// of the orderer orgs: one suffices, as for a stock peer), else why none is.
// The certificate's expiry is not checked (a stock peer's MSP does not
// either): an old block keeps the signature it had.
func acceptedSignature(ch *channelconfig.Channel, sds []block.SignedData) error {
	var errs []error
	for i, sd := range sds {
		err := block.VerifyCreatorSignature(sd.Identity, sd.Data, sd.Signature)
		if err == nil {
			var mspID string
			var cert *x509.Certificate
			if mspID, cert, err = block.CreatorCertificate(sd.Identity); err == nil {
				err = ch.CheckBlockSigner(mspID, cert, cert.NotBefore)
			}
		}
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("signature %d: %w", i, err))
	}
	return errors.Join(errs...)
}

// copySwitchAfter: apply waiting this long for a block the copy stream's
// peer has not sent switches the stream to another peer. A live peer
// stores a block a few milliseconds after this node learns it is
// committed; while apply waits, this node's raft loop waits too (a
// leader sends no heartbeat), so the switch comes well within an
// election timeout.
const copySwitchAfter = 500 * time.Millisecond

// copyAhead bounds the blocks the copy stream holds ahead of apply.
const copyAhead = 256

// errCopySwitch cancels a copy stream whose peer is too slow.
var errCopySwitch = errors.New("no block from this peer in time: switching")

// copyStream keeps one Deliver stream (Config.Fetcher as a BlockFollower)
// to another consenter open while this node stores other consenters'
// copies, and holds the blocks it sends until apply takes them: a block is
// usually there before apply needs it (a follower applies after the
// leader), and a leading node waits only for one peer to store it, not a
// request and a one-second retry per block.
type copyStream struct {
	mu      sync.Mutex
	got     map[uint64]*common.Block
	from    uint64                  // the block the next stream starts at
	arrived chan struct{}           // closed and replaced when a block comes or the stream ends
	cancel  context.CancelCauseFunc // ends the stream goroutine
	// cancelStream ends the current stream (the next asks another peer).
	cancelStream context.CancelCauseFunc
	done         chan struct{} // closed when the stream goroutine ends
}

// copyOf returns another consenter's copy of block b, from the copy stream
// (started here on first use), or with one request if Fetcher is no
// BlockFollower.
func (n *Node) copyOf(ctx context.Context, b *common.Block) (*common.Block, error) {
	f, ok := n.cfg.Fetcher.(BlockFollower)
	if !ok {
		return n.fetchSigned(ctx, b)
	}
	num, want := b.Header.Number, block.HeaderHash(b.Header)
	s := n.copies
	if s == nil {
		s = &copyStream{got: map[uint64]*common.Block{}, from: num, arrived: make(chan struct{}), done: make(chan struct{})}
		sctx, cancel := context.WithCancelCause(ctx)
		s.cancel = cancel
		n.copies = s
		go s.run(sctx, n, f)
	}
	since := time.Now()
	warned := false
	timer := time.NewTimer(copySwitchAfter)
	defer timer.Stop()
	for {
		s.mu.Lock()
		fb := s.got[num]
		took := false
		for k := range s.got {
			if k <= num {
				delete(s.got, k)
				took = true
			}
		}
		if took { // room for the stream again
			close(s.arrived)
			s.arrived = make(chan struct{})
		}
		if fb == nil && (s.from > num || num-s.from > copyAhead) {
			// num was dropped, or the stream is far behind (blocks
			// this node stored otherwise): start again at num.
			from := s.from
			s.from = num
			clear(s.got) // none is num or before: room for the new stream
			s.mu.Unlock()
			s.switchPeer(fmt.Errorf("copy stream at block %d, apply needs %d", from, num))
			s.mu.Lock()
		}
		arrived := s.arrived
		s.mu.Unlock()
		if fb != nil && bytes.Equal(block.HeaderHash(fb.Header), want) {
			if err := n.checkCopy(fb); err != nil {
				s.mu.Lock()
				s.from = num
				clear(s.got)
				s.mu.Unlock()
				s.switchPeer(err)
				continue
			}
		}
		if fb != nil {
			if bytes.Equal(block.HeaderHash(fb.Header), want) {
				if warned {
					n.log.Info("storing other consenters' copies again", "block", num, "waited", time.Since(since).Round(time.Millisecond))
				}
				return fb, nil
			}
			n.log.Warn("a peer's copy of a block differs from the raft log's: asking another", "block", num)
			s.mu.Lock()
			s.from = num
			clear(s.got)
			s.mu.Unlock()
			s.switchPeer(fmt.Errorf("%w: block %d from a peer differs from the raft log's", ErrCatchUp, num))
			continue
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: block %d: %w", ErrCatchUp, num, ctx.Err())
		case <-arrived:
		case <-timer.C:
			if !warned && time.Since(since) > 5*copySwitchAfter {
				warned = true
				n.log.Warn("no other consenter sends its copy of a block this node may not sign yet; still asking", "block", num, "waited", time.Since(since).Round(time.Millisecond))
			}
			s.switchPeer(errCopySwitch)
			timer.Reset(copySwitchAfter)
		}
	}
}

// switchPeer ends the current stream; the next one asks another peer.
func (s *copyStream) switchPeer(cause error) {
	s.mu.Lock()
	c := s.cancelStream
	s.mu.Unlock()
	if c != nil {
		c(cause)
	}
}

// run follows the chain from s.from until ctx ends, one stream at a time.
func (s *copyStream) run(ctx context.Context, n *Node, f BlockFollower) {
	defer close(s.done)
	wait := 50 * time.Millisecond
	for ctx.Err() == nil {
		pctx, cancel := context.WithCancelCause(ctx)
		s.mu.Lock()
		s.cancelStream = cancel
		from := s.from
		s.mu.Unlock()
		t0 := time.Now()
		err := s.follow(pctx, n, f, from)
		cancel(nil)
		s.mu.Lock()
		s.cancelStream = nil
		s.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		n.log.Debug("copy stream ended; asking the next peer", "from", from, "err", err)
		if time.Since(t0) > 10*time.Second {
			wait = 50 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// follow runs one stream from block from. A panic while following or
// handling what the peer sent ends that stream only (logged, counted): the
// next one asks another peer, and the process goes on.
func (s *copyStream) follow(ctx context.Context, n *Node, f BlockFollower, from uint64) (err error) {
	defer recoverTo(n.log, n.cfg.Metrics, "following another consenter's blocks", &err)
	return f.FollowBlocks(ctx, from, func(raw []byte) error { return s.put(ctx, raw) })
}

// put holds a block the stream sent, waiting while copyAhead are held.
// Its signatures are checked when apply takes it (checkCopy), under the
// config in force before it: the stream runs ahead of apply, past CONFIG
// blocks that may change who may sign.
func (s *copyStream) put(ctx context.Context, raw []byte) error {
	b, err := block.Unmarshal(raw)
	if err != nil {
		return err
	}
	if !bytes.Equal(b.Header.DataHash, block.DataHash(b.Data)) {
		return fmt.Errorf("%w: block %d from a peer: data hash mismatch", ErrCatchUp, b.Header.Number)
	}
	if _, err := block.Signatures(b); err != nil {
		return fmt.Errorf("%w: block %d from a peer: %w", ErrCatchUp, b.Header.Number, err)
	}
	for {
		s.mu.Lock()
		if len(s.got) < copyAhead {
			if b.Header.Number == s.from {
				s.got[b.Header.Number] = b
				s.from++
			}
			close(s.arrived)
			s.arrived = make(chan struct{})
			s.mu.Unlock()
			return nil
		}
		arrived := s.arrived
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-arrived: // apply took some
		}
	}
}

// stop ends the copy stream and waits for it.
func (s *copyStream) stop() {
	if s != nil {
		s.cancel(nil)
		<-s.done
	}
}

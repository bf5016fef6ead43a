package orderer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/memberd/memberd/node/block"
)

// Identity is a Fabric client or node identity: an MSP id, an X.509
// certificate and the signer of its key (an HSM key).
type Identity struct {
	MSPID  string
	Cert   *x509.Certificate
	Signer crypto.Signer
}

// Serialized returns the marshalled msp.SerializedIdentity (certificate as
// PEM, as Fabric MSPs write it).
func (id Identity) Serialized() []byte {
	b, _ := proto.Marshal(&msp.SerializedIdentity{Mspid: id.MSPID,
		IdBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.Cert.Raw})})
	return b
}

// Sign signs msg (SHA-256, low-S ECDSA, DER).
func (id Identity) Sign(msg []byte) ([]byte, error) {
	pub, ok := id.Cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: certificate %q has a %T key; Fabric identities use ECDSA", block.ErrUnsupportedKey, id.Cert.Subject.CommonName, id.Cert.PublicKey)
	}
	return block.SignECDSA(id.Signer, pub, msg, rand.Reader)
}

// NewEnvelope builds and signs an envelope of type typ on channel carrying
// data, with a fresh nonce and the matching tx id.
func NewEnvelope(id Identity, typ common.HeaderType, channel string, data []byte, now time.Time) (*common.Envelope, string, error) {
	return newEnvelope(id, typ, channel, now, func(_, _ []byte) ([]byte, error) { return data, nil })
}

// newEnvelope is NewEnvelope with the payload data built by data from the
// marshalled channel and signature headers.
func newEnvelope(id Identity, typ common.HeaderType, channel string, now time.Time, data func(ch, sh []byte) ([]byte, error)) (*common.Envelope, string, error) {
	nonce := make([]byte, block.NonceSize)
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, "", err
	}
	creator := id.Serialized()
	txid := block.ComputeTxID(nonce, creator)
	ch, err := proto.Marshal(&common.ChannelHeader{Type: int32(typ), ChannelId: channel, TxId: txid,
		Timestamp: timestamppb.New(now)})
	if err != nil {
		return nil, "", err
	}
	sh, err := proto.Marshal(&common.SignatureHeader{Creator: creator, Nonce: nonce})
	if err != nil {
		return nil, "", err
	}
	d, err := data(ch, sh)
	if err != nil {
		return nil, "", err
	}
	payload, err := proto.Marshal(&common.Payload{Header: &common.Header{ChannelHeader: ch, SignatureHeader: sh}, Data: d})
	if err != nil {
		return nil, "", err
	}
	sig, err := id.Sign(payload)
	if err != nil {
		return nil, "", err
	}
	return &common.Envelope{Payload: payload, Signature: sig}, txid, nil
}

// NewTransaction is NewEnvelope for an ENDORSER_TRANSACTION whose payload
// data is data as is: raw bytes, not the peer.Transaction Fabric peers and
// tools expect (configtxlator cannot decode such a block, and peers flag
// the transaction invalid). NewEndorserTransaction writes the Fabric form.
func NewTransaction(id Identity, channel string, data []byte, now time.Time) (*common.Envelope, string, error) {
	return NewEnvelope(id, common.HeaderType_ENDORSER_TRANSACTION, channel, data, now)
}

// SeekRange returns a SeekInfo for blocks from..to (to = MaxBlock: forever).
func SeekRange(from, to uint64, behavior ab.SeekInfo_SeekBehavior) *ab.SeekInfo {
	return &ab.SeekInfo{
		Start:    &ab.SeekPosition{Type: &ab.SeekPosition_Specified{Specified: &ab.SeekSpecified{Number: from}}},
		Stop:     &ab.SeekPosition{Type: &ab.SeekPosition_Specified{Specified: &ab.SeekSpecified{Number: to}}},
		Behavior: behavior,
	}
}

// SeekNewest returns a SeekInfo for the newest block only.
func SeekNewest() *ab.SeekInfo {
	p := &ab.SeekPosition{Type: &ab.SeekPosition_Newest{Newest: &ab.SeekNewest{}}}
	return &ab.SeekInfo{Start: p, Stop: p, Behavior: ab.SeekInfo_FAIL_IF_NOT_READY}
}

// NewSeekEnvelope builds the signed DELIVER_SEEK_INFO envelope for seek.
func NewSeekEnvelope(id Identity, channel string, seek *ab.SeekInfo, now time.Time) (*common.Envelope, error) {
	data, err := proto.Marshal(seek)
	if err != nil {
		return nil, err
	}
	env, _, err := NewEnvelope(id, common.HeaderType_DELIVER_SEEK_INFO, channel, data, now)
	return env, err
}

// ErrStatus: a Deliver or Broadcast answer that is not SUCCESS.
var ErrStatus = errors.New("orderer answered")

// Fetch runs one Deliver request and calls fn for each block, in order. It
// returns nil when the server ends with SUCCESS, an error wrapping ErrStatus
// (naming the status) for another final status. opts go to the Deliver call
// (e.g. grpc.Peer to learn the server's certificate).
func Fetch(ctx context.Context, c ab.AtomicBroadcastClient, id Identity, channel string, seek *ab.SeekInfo, fn func(*common.Block) error, opts ...grpc.CallOption) error {
	env, err := NewSeekEnvelope(id, channel, seek, time.Now())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Deliver(ctx, opts...)
	if err != nil {
		return err
	}
	if err := stream.Send(env); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		switch t := resp.Type.(type) {
		case *ab.DeliverResponse_Block:
			if err := fn(t.Block); err != nil {
				return err
			}
		case *ab.DeliverResponse_Status:
			if t.Status == common.Status_SUCCESS {
				return nil
			}
			return fmt.Errorf("%w %s", ErrStatus, t.Status)
		}
	}
}

// DeliverFetcher is a BlockFetcher that pulls blocks from peers' Deliver
// service with the node's own identity (a member, hence a reader). Peers are
// tried in turn until one delivers, starting with the last one that did,
// the raft leader last (Leader).
//
// The blocks come gzip-compressed (compress.go): a catch-up is bound by the
// bytes the tunnel and the relays' per-member rate carry, and blocks of
// signed envelopes, each with its creator's certificate, shrink about 6
// times. A peer that refuses the compressed request (an older memberd
// without the compressor) is asked again without it.
type DeliverFetcher struct {
	Peers    []ab.AtomicBroadcastClient
	Identity Identity
	// CurrentIdentity, if set, is asked for the identity at every fetch
	// instead of Identity (so an HSM identity rotation needs no restart).
	CurrentIdentity func() Identity
	Channel         string
	// StallTimeout: a peer that sends no block for this long is given up
	// (its stream cancelled) and the next one tried. A peer killed
	// mid-stream leaves the stream open with nothing on it (through the
	// tunnel no reset comes back): without this, catch-up waited for it
	// for minutes. Default 10s (DefaultFetchStall).
	StallTimeout time.Duration
	// FirstBlockTimeout: a peer whose first block does not come within this
	// long is given up and the next one tried. The leader is asked last, so
	// a dead peer asked first (its connection open as seen through the
	// tunnel) must not hold the catch-up for a whole StallTimeout. Default
	// 2s (DefaultFirstBlockTimeout), at most StallTimeout.
	FirstBlockTimeout time.Duration
	// Leader, if set, reports whether Peers[i] is the raft leader now. It
	// is asked last: its upload already carries the replication of every
	// new block to every follower, and the relays rate-limit each member's
	// upload (relay.Config.RateBytesPerSec), so a catch-up from another
	// peer does not compete with it (issue #11).
	Leader func(i int) bool

	first atomic.Uint32 // the peer to try first: the last one that delivered
}

// order returns the indexes of Peers in the order to try: from the last
// one that delivered, the leader last.
func (f *DeliverFetcher) order() []int {
	start := int(f.first.Load())
	var out, last []int
	for k := range f.Peers {
		i := (start + k) % len(f.Peers)
		if f.Leader != nil && f.Leader(i) {
			last = append(last, i)
		} else {
			out = append(out, i)
		}
	}
	return append(out, last...)
}

// DefaultFetchStall is DeliverFetcher.StallTimeout's default.
const DefaultFetchStall = 10 * time.Second

// DefaultFirstBlockTimeout is DeliverFetcher.FirstBlockTimeout's default:
// a live peer's first block comes after a connection and a TLS handshake
// through the tunnel and one signature check, well under a second.
const DefaultFirstBlockTimeout = 2 * time.Second

var _ BlockFetcher = (*DeliverFetcher)(nil)

// errStalled: the peer sent nothing for StallTimeout.
var errStalled = errors.New("peer sent no block")

// FetchBlocks implements BlockFetcher. An error of fn stops it at once
// (the blocks are not the caller's next ones: another peer would not
// help); a peer that fails or stalls passes the rest of the range on to
// the next.
func (f *DeliverFetcher) FetchBlocks(ctx context.Context, from, to uint64, fn func(raw []byte) error) error {
	var errs []error
	id := f.Identity
	if f.CurrentIdentity != nil {
		id = f.CurrentIdentity()
	}
	stall := f.StallTimeout
	if stall <= 0 {
		stall = DefaultFetchStall
	}
	first := f.FirstBlockTimeout
	if first <= 0 {
		first = DefaultFirstBlockTimeout
	}
	first = min(first, stall)
	for _, i := range f.order() {
		next := from
		var fnErr error
		pctx, cancel := context.WithCancelCause(ctx)
		var stalled atomic.Int64 // the timeout running: first, then stall
		stalled.Store(int64(first))
		timer := time.AfterFunc(first, func() {
			cancel(fmt.Errorf("%w for %v", errStalled, time.Duration(stalled.Load())))
		})
		got := false // a block came on this stream
		onBlock := func(b *common.Block) error {
			got = true
			stalled.Store(int64(stall))
			timer.Reset(stall)
			if byFn, err := passOn(b, &next, fn); err != nil {
				if byFn {
					fnErr = err
				}
				return err
			}
			from = next
			return nil
		}
		seek := SeekRange(from, to, ab.SeekInfo_FAIL_IF_NOT_READY)
		err := Fetch(pctx, f.Peers[i], id, f.Channel, seek, onBlock, grpc.UseCompressor(gzip.Name))
		if err != nil && !got && fnErr == nil && status.Code(err) == codes.Unimplemented && pctx.Err() == nil {
			// A peer without the gzip compressor (an older memberd)
			// refuses the compressed request: the same, uncompressed.
			err = Fetch(pctx, f.Peers[i], id, f.Channel, seek, onBlock)
		}
		timer.Stop()
		if cause := context.Cause(pctx); err != nil && errors.Is(cause, errStalled) {
			err = fmt.Errorf("peer %d: %w (at block %d)", i, cause, next)
		}
		cancel(nil)
		if err == nil {
			f.first.Store(uint32(i))
			return nil
		}
		if fnErr != nil {
			return fnErr
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("%w: %w", ErrCatchUp, errors.Join(errs...))
}

// passOn hands block b, marshalled, to fn if it is block *next, and
// counts it; byFn tells an error of fn's from a block out of order.
func passOn(b *common.Block, next *uint64, fn func(raw []byte) error) (byFn bool, err error) {
	if b.GetHeader().GetNumber() != *next {
		return false, fmt.Errorf("%w: peer sent block %d, want %d", ErrCatchUp, b.GetHeader().GetNumber(), *next)
	}
	raw, err := block.Marshal(b)
	if err != nil {
		return false, err
	}
	if err := fn(raw); err != nil {
		return true, err
	}
	*next++
	return false, nil
}

var _ BlockFollower = (*DeliverFetcher)(nil)

// FollowBlocks implements BlockFollower: one Deliver stream, from block
// from on, that waits for new blocks (BLOCK_UNTIL_READY), from one peer,
// the next one in order after a call that ended without ctx's end. It
// returns when the stream ends: an error of fn, of the peer, or ctx's.
// No stall timeout here: between blocks a live stream is quiet; the
// caller cancels ctx when it waited too long for a block.
func (f *DeliverFetcher) FollowBlocks(ctx context.Context, from uint64, fn func(raw []byte) error) error {
	if len(f.Peers) == 0 {
		return fmt.Errorf("%w: no peer to fetch from", ErrCatchUp)
	}
	id := f.Identity
	if f.CurrentIdentity != nil {
		id = f.CurrentIdentity()
	}
	i := f.order()[0]
	next, got := from, false
	onBlock := func(b *common.Block) error {
		got = true
		_, err := passOn(b, &next, fn)
		return err
	}
	seek := SeekRange(from, MaxBlock, ab.SeekInfo_BLOCK_UNTIL_READY)
	err := Fetch(ctx, f.Peers[i], id, f.Channel, seek, onBlock, grpc.UseCompressor(gzip.Name))
	if err != nil && !got && status.Code(err) == codes.Unimplemented && ctx.Err() == nil {
		err = Fetch(ctx, f.Peers[i], id, f.Channel, seek, onBlock)
	}
	if ctx.Err() == nil || context.Cause(ctx) != ctx.Err() {
		// Not a plain stop: the next call tries the next peer.
		f.first.Store(uint32((i + 1) % len(f.Peers)))
	}
	if err == nil {
		err = fmt.Errorf("%w: peer %d ended the stream", ErrCatchUp, i)
	}
	return fmt.Errorf("peer %d: %w", i, err)
}

package orderer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"

	"github.com/memberd/memberd/node/block"
)

// Submitted is the outcome of Submit.
type Submitted struct {
	Status common.Status
	Info   string
	// Attempts is how many times the envelope was sent.
	Attempts int
	// Block is set when a resend was refused as a duplicate and the
	// envelope was then found in that block (ordered by an earlier attempt).
	Block *uint64
}

// resubmitWindow is how many blocks below the height seen at the first
// SERVICE_UNAVAILABLE Submit searches for an envelope ordered meanwhile.
const resubmitWindow = 16

// Submit broadcasts env (whose transaction id is txid) and returns the
// answer, resending the same envelope after SERVICE_UNAVAILABLE (backoff
// from 200 ms up to 2 s) until another answer comes or ctx ends: that status
// means the ordering service could not take the envelope now, or that a
// leader change left it "maybe ordered: resubmit". Resending the same
// envelope keeps it at most once in the chain: when a resend is refused as
// a duplicate, the earlier attempt did reach the service, and Submit looks
// for txid in the chain with Deliver (from just below the height when the
// first attempt was refused, waiting for new blocks) and answers SUCCESS
// with the block once it is there. A transport error ends Submit at once.
func Submit(ctx context.Context, c ab.AtomicBroadcastClient, id Identity, channel string, env *common.Envelope, txid string) (Submitted, error) {
	var res Submitted
	backoff := 200 * time.Millisecond
	var floor uint64
	haveFloor := false
	for {
		resp, err := broadcastOnce(ctx, c, env)
		if err != nil {
			return res, err
		}
		res.Attempts++
		res.Status, res.Info = resp.Status, resp.Info
		switch {
		case resp.Status == common.Status_SERVICE_UNAVAILABLE:
			if !haveFloor {
				if h, err := newestHeight(ctx, c, id, channel); err == nil {
					floor, haveFloor = h, true
				}
			}
			select {
			case <-ctx.Done():
				return res, nil // the last answer stands
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		case res.Attempts > 1 && resp.Status != common.Status_SUCCESS && strings.Contains(resp.Info, ErrDuplicate.Error()):
			n, err := findTx(ctx, c, id, channel, floor-min(floor, resubmitWindow), txid)
			if err != nil {
				res.Info += fmt.Sprintf(" (an earlier attempt reached the ordering service, but the transaction was not found in the chain: %v)", err)
				return res, nil
			}
			res.Status, res.Info, res.Block = common.Status_SUCCESS, fmt.Sprintf("ordered by an earlier attempt, in block %d", n), &n
		}
		return res, nil
	}
}

// broadcastOnce sends env on a new Broadcast stream and returns the answer.
func broadcastOnce(ctx context.Context, c ab.AtomicBroadcastClient, env *common.Envelope) (*ab.BroadcastResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Broadcast(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(env); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	_ = stream.CloseSend()
	return resp, nil
}

// newestHeight asks for the newest block: its number + 1.
func newestHeight(ctx context.Context, c ab.AtomicBroadcastClient, id Identity, channel string) (uint64, error) {
	var h uint64
	err := Fetch(ctx, c, id, channel, SeekNewest(), func(b *common.Block) error {
		h = b.GetHeader().GetNumber() + 1
		return nil
	})
	return h, err
}

var errFound = errors.New("found")

// findTx reads blocks from `from` on, waiting for new ones, until one holds
// txid (its number) or ctx ends.
func findTx(ctx context.Context, c ab.AtomicBroadcastClient, id Identity, channel string, from uint64, txid string) (uint64, error) {
	var n uint64
	err := Fetch(ctx, c, id, channel, SeekRange(from, MaxBlock, ab.SeekInfo_BLOCK_UNTIL_READY), func(b *common.Block) error {
		for _, raw := range b.GetData().GetData() {
			if env, err := block.ParseEnvelope(raw); err == nil && env.TxID() == txid {
				n = b.GetHeader().GetNumber()
				return errFound
			}
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return n, nil
	}
	if err == nil {
		err = errors.New("the chain ended")
	}
	return 0, err
}

package orderer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/protobuf/proto"
)

// BroadcastForwarder is a Forwarder over the leader's own Broadcast service:
// one pipelined stream per leader, answers matched to requests in order (as
// Broadcast answers). Peers maps raft IDs to clients of those nodes. Close
// ends the streams.
type BroadcastForwarder struct {
	Peers map[uint64]ab.AtomicBroadcastClient
	// Lookup, if set, gives the client of a raft ID that Peers lacks (a
	// consenter added while running); nil = unknown. It must not block.
	Lookup func(id uint64) ab.AtomicBroadcastClient

	mu      sync.Mutex
	streams map[uint64]*fwdStream
	closed  bool
}

var _ Forwarder = (*BroadcastForwarder)(nil)

type fwdStream struct {
	cancel  context.CancelFunc
	mu      sync.Mutex // serialises Send with the queue order
	stream  ab.AtomicBroadcast_BroadcastClient
	waiting chan chan *ab.BroadcastResponse
	broken  chan struct{}
	err     error
}

// Forward implements Forwarder: it sends env on the leader's stream and
// returns a wait that yields nil once the leader answered SUCCESS.
func (f *BroadcastForwarder) Forward(ctx context.Context, leader uint64, env []byte) (func(context.Context) error, error) {
	s, err := f.stream(leader)
	if err != nil {
		return nil, err
	}
	var msg common.Envelope
	if err := proto.Unmarshal(env, &msg); err != nil {
		return nil, err
	}
	reply := make(chan *ab.BroadcastResponse, 1)
	// A leader that reads nothing (killed: through the tunnel its stream
	// neither fails nor moves for minutes) fills the stream's window, and
	// Send then blocks, with s.mu held, until the stream ends. When ctx
	// ends first (the caller's, e.g. the leader changed), end the stream:
	// that frees this call and every other one queued on it.
	unhook := context.AfterFunc(ctx, func() { f.drop(leader, s) })
	defer unhook()
	s.mu.Lock()
	select {
	case s.waiting <- reply:
	case <-s.broken:
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: forwarding to leader %d: %v", ErrUnavailable, leader, s.err)
	case <-ctx.Done():
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
	err = s.stream.Send(&msg)
	s.mu.Unlock()
	if err != nil {
		f.drop(leader, s)
		return nil, fmt.Errorf("%w: forwarding to leader %d: %v", ErrUnavailable, leader, err)
	}
	return func(ctx context.Context) error {
		select {
		case r := <-reply:
			if r.Status != common.Status_SUCCESS {
				return fmt.Errorf("%w: leader %d answered %s: %s", statusErr(r.Status), leader, r.Status, r.Info)
			}
			return nil
		case <-s.broken:
			return fmt.Errorf("%w: forwarding to leader %d: %v", ErrUnavailable, leader, s.err)
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		}
	}, nil
}

// statusErr maps a leader's status back to this package's sentinels so the
// follower answers its client with the same status.
func statusErr(st common.Status) error {
	switch st {
	case common.Status_FORBIDDEN:
		return ErrForbidden
	case common.Status_NOT_FOUND:
		return ErrNotFound
	case common.Status_NOT_IMPLEMENTED:
		return ErrNotImplemented
	case common.Status_BAD_REQUEST, common.Status_REQUEST_ENTITY_TOO_LARGE:
		return ErrBadRequest
	default:
		return ErrUnavailable
	}
}

// forwardOpenTimeout bounds opening a Broadcast stream to the leader.
const forwardOpenTimeout = 5 * time.Second

func (f *BroadcastForwarder) stream(leader uint64) (*fwdStream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	if s, ok := f.streams[leader]; ok {
		return s, nil
	}
	c, ok := f.Peers[leader]
	if !ok && f.Lookup != nil {
		c = f.Lookup(leader)
		ok = c != nil
	}
	if !ok {
		return nil, fmt.Errorf("%w: no address for leader %d", ErrUnavailable, leader)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// Opening waits for the connection; bound it (the lock is held), but
	// not the stream's life.
	t := time.AfterFunc(forwardOpenTimeout, cancel)
	st, err := c.Broadcast(ctx)
	if !t.Stop() && err == nil {
		err = fmt.Errorf("not open within %v", forwardOpenTimeout)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: opening Broadcast to leader %d: %v", ErrUnavailable, leader, err)
	}
	s := &fwdStream{cancel: cancel, stream: st, waiting: make(chan chan *ab.BroadcastResponse, DefaultMaxPendingPerStream),
		broken: make(chan struct{})}
	go func() { // the receiver: answers come in request order
		for {
			r, err := st.Recv()
			if err != nil {
				s.err = err
				close(s.broken)
				f.drop(leader, s)
				return
			}
			select {
			case w := <-s.waiting:
				w <- r
			default: // an answer nobody asked for: the stream is confused
				s.err = errors.New("unexpected Broadcast answer")
				close(s.broken)
				f.drop(leader, s)
				return
			}
		}
	}()
	if f.streams == nil {
		f.streams = map[uint64]*fwdStream{}
	}
	f.streams[leader] = s
	return s, nil
}

func (f *BroadcastForwarder) drop(leader uint64, s *fwdStream) {
	f.mu.Lock()
	if f.streams[leader] == s {
		delete(f.streams, leader)
	}
	f.mu.Unlock()
	s.cancel()
}

// Close ends every stream. Idempotent.
func (f *BroadcastForwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	streams := f.streams
	f.streams = nil
	f.mu.Unlock()
	for _, s := range streams {
		s.cancel()
	}
	return nil
}

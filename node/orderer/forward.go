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
	cancel context.CancelFunc
	// ready is closed once the stream is open (stream set) or failed to
	// open (openErr set); stream and openErr are read only after it.
	ready   chan struct{}
	openErr error
	openers int        // callers waiting in stream for ready (f.mu)
	mu      sync.Mutex // serialises Send with the queue order
	stream  ab.AtomicBroadcast_BroadcastClient
	waiting chan chan *ab.BroadcastResponse
	broken  chan struct{}
	err     error
}

// Forward implements Forwarder: it sends env on the leader's stream and
// returns a wait that yields nil once the leader answered SUCCESS.
func (f *BroadcastForwarder) Forward(ctx context.Context, leader uint64, env []byte) (func(context.Context) error, error) {
	var msg common.Envelope
	if err := proto.Unmarshal(env, &msg); err != nil {
		return nil, err
	}
	s, err := f.stream(ctx, leader)
	if err != nil {
		return nil, err
	}
	reply := make(chan *ab.BroadcastResponse, 1)
	// A leader that reads nothing (killed: through the tunnel its stream
	// neither fails nor moves for minutes) fills the stream's window, and
	// Send then blocks, with s.mu held, until the stream ends. When the
	// leader changes first (ctx ends with errLeaderChanged), end the
	// stream: that frees this call and every other one queued on it. Not
	// when only this caller gave up (its client left): the other
	// envelopes in flight on the stream are still good.
	unhook := context.AfterFunc(ctx, func() {
		if errors.Is(context.Cause(ctx), errLeaderChanged) {
			f.drop(leader, s)
		}
	})
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

// stream returns the leader's stream, opening it if there is none, and
// waits until it is open, but not past ctx. The opening holds no lock and
// ends with the stream (drop): a leader killed behind the tunnel is dialled
// for up to forwardOpenTimeout without an answer, and a follower that had
// no stream to it yet (its clients went to the leader directly) waited
// that long, with every forward to any leader behind it, before it could
// forward to the next leader (issue #11: a 5 s traffic gap after the
// leader's kill, where the election took 1.4 s).
func (f *BroadcastForwarder) stream(ctx context.Context, leader uint64) (*fwdStream, error) {
	if err := ctx.Err(); err != nil { // the leader changed while this call queued: open nothing
		return nil, fmt.Errorf("%w: forwarding to leader %d: %w", ErrUnavailable, leader, err)
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, ErrClosed
	}
	s, ok := f.streams[leader]
	if !ok {
		c, found := f.Peers[leader]
		if !found && f.Lookup != nil {
			c = f.Lookup(leader)
			found = c != nil
		}
		if !found {
			f.mu.Unlock()
			return nil, fmt.Errorf("%w: no address for leader %d", ErrUnavailable, leader)
		}
		sctx, cancel := context.WithCancel(context.Background())
		s = &fwdStream{cancel: cancel, ready: make(chan struct{}),
			waiting: make(chan chan *ab.BroadcastResponse, DefaultMaxPendingPerStream), broken: make(chan struct{})}
		if f.streams == nil {
			f.streams = map[uint64]*fwdStream{}
		}
		f.streams[leader] = s
		go f.run(sctx, c, leader, s)
	}
	s.openers++
	f.mu.Unlock()
	select {
	case <-s.ready:
		f.mu.Lock()
		s.openers--
		f.mu.Unlock()
		if s.openErr != nil {
			return nil, s.openErr
		}
		return s, nil
	case <-ctx.Done():
		// End the opening only when no other caller still waits for it.
		f.mu.Lock()
		s.openers--
		abandon := false
		if s.openers == 0 {
			select {
			case <-s.ready: // opened meanwhile: later callers may use it
			default:
				abandon = true
				if f.streams[leader] == s {
					delete(f.streams, leader)
				}
			}
		}
		f.mu.Unlock()
		if abandon {
			s.cancel()
		}
		return nil, fmt.Errorf("%w: opening Broadcast to leader %d: %w", ErrUnavailable, leader, ctx.Err())
	}
}

// run opens s (bounded by forwardOpenTimeout, and ended by drop or Close
// through ctx), then receives its answers, which come in request order.
func (f *BroadcastForwarder) run(ctx context.Context, c ab.AtomicBroadcastClient, leader uint64, s *fwdStream) {
	t := time.AfterFunc(forwardOpenTimeout, s.cancel)
	st, err := c.Broadcast(ctx)
	if !t.Stop() && err == nil {
		err = fmt.Errorf("not open within %v", forwardOpenTimeout)
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		s.openErr = fmt.Errorf("%w: opening Broadcast to leader %d: %v", ErrUnavailable, leader, err)
		f.drop(leader, s)
		close(s.ready)
		return
	}
	s.stream = st
	close(s.ready)
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

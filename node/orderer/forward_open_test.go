package orderer

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

// slowOpenLeader opens a Broadcast stream only when release is closed
// (a leader reached over a slow tunnel dial), then answers SUCCESS to
// every envelope.
type slowOpenLeader struct {
	ab.AtomicBroadcastClient
	opening chan struct{}
	release chan struct{}
}

func (l *slowOpenLeader) Broadcast(ctx context.Context, _ ...grpc.CallOption) (ab.AtomicBroadcast_BroadcastClient, error) {
	select {
	case l.opening <- struct{}{}:
	default:
	}
	select {
	case <-l.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &okStream{ctx: ctx, replies: make(chan struct{}, 64)}, nil
}

type okStream struct {
	grpc.ClientStream
	ctx     context.Context
	mu      sync.Mutex
	replies chan struct{}
}

func (s *okStream) Send(*common.Envelope) error { s.replies <- struct{}{}; return nil }
func (s *okStream) Recv() (*ab.BroadcastResponse, error) {
	select {
	case <-s.replies:
		return &ab.BroadcastResponse{Status: common.Status_SUCCESS}, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// One client giving up (its Broadcast stream ends: ctx cancelled) while
// the forward stream to the SAME, live leader is still opening must not
// fail the other clients waiting on that opening. Before c585fdc the
// opening ran with its own context and B succeeded.
func TestForwardOpenSurvivesOneCallerLeaving(t *testing.T) {
	c := newConsortium(t, 3, block.CutterConfig{})
	envs, _ := envelopes(t, c.identity(t, "m1", "client"), 2, 3)
	lead := &slowOpenLeader{opening: make(chan struct{}, 1), release: make(chan struct{})}
	f := &BroadcastForwarder{Peers: map[uint64]ab.AtomicBroadcastClient{1: lead}}
	defer f.Close()
	rawA, _ := proto.Marshal(envs[0])
	rawB, _ := proto.Marshal(envs[1])

	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() { _, err := f.Forward(ctxA, 1, rawA); errA <- err }()
	<-lead.opening

	type res struct {
		wait func(context.Context) error
		err  error
	}
	resB := make(chan res, 1)
	go func() { w, err := f.Forward(context.Background(), 1, rawB); resB <- res{w, err} }()
	time.Sleep(50 * time.Millisecond) // B is waiting on the same opening

	cancelA() // client A disconnected; the leader did NOT change
	<-errA
	time.Sleep(20 * time.Millisecond)
	close(lead.release) // the leader answers the dial

	r := <-resB
	if r.err != nil {
		t.Fatalf("client B's forward failed because client A gave up: %v", r.err)
	}
	if err := r.wait(context.Background()); err != nil {
		t.Fatalf("client B's answer: %v", err)
	}
}

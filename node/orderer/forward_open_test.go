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

// slowLeader reads an envelope only when told to (a live leader whose
// stream window is full) and answers SUCCESS to each one it read.
type slowLeader struct {
	ab.AtomicBroadcastClient
	sending chan struct{}
	read    chan struct{}
}

func (l *slowLeader) Broadcast(ctx context.Context, _ ...grpc.CallOption) (ab.AtomicBroadcast_BroadcastClient, error) {
	return &slowStream{ctx: ctx, l: l, replies: make(chan struct{}, 64)}, nil
}

type slowStream struct {
	grpc.ClientStream
	ctx     context.Context
	l       *slowLeader
	replies chan struct{}
}

func (s *slowStream) Send(*common.Envelope) error {
	select {
	case s.l.sending <- struct{}{}:
	default:
	}
	select {
	case <-s.l.read:
		s.replies <- struct{}{}
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *slowStream) Recv() (*ab.BroadcastResponse, error) {
	select {
	case <-s.replies:
		return &ab.BroadcastResponse{Status: common.Status_SUCCESS}, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// TestForwardSurvivesOneClientLeavingMidSend: client A's envelope is
// forwarded and answered; client B's is stuck in Send (the live leader's
// window is full) when B's client goes away. That must not end the
// stream: A's answer still arrives, and the stream carries the next
// envelope. Only a change of leader (cause errLeaderChanged) ends it
// (TestForwardToDeafLeaderEndsWithCtx).
func TestForwardSurvivesOneClientLeavingMidSend(t *testing.T) {
	c := newConsortium(t, 3, block.CutterConfig{})
	envs, _ := envelopes(t, c.identity(t, "m1", "client"), 3, 3)
	raws := make([][]byte, len(envs))
	for i, e := range envs {
		raws[i], _ = proto.Marshal(e)
	}
	lead := &slowLeader{sending: make(chan struct{}, 1), read: make(chan struct{})}
	f := &BroadcastForwarder{Peers: map[uint64]ab.AtomicBroadcastClient{1: lead}}
	defer f.Close()

	type res struct {
		wait func(context.Context) error
		err  error
	}
	resA := make(chan res, 1)
	go func() { w, err := f.Forward(context.Background(), 1, raws[0]); resA <- res{w, err} }()
	<-lead.sending
	lead.read <- struct{}{} // A's envelope read
	a := <-resA
	if a.err != nil {
		t.Fatalf("client A's forward: %v", a.err)
	}

	ctxB, cancelB := context.WithCancel(context.Background())
	errB := make(chan error, 1)
	go func() { _, err := f.Forward(ctxB, 1, raws[1]); errB <- err }()
	<-lead.sending // B stuck in Send
	cancelB()      // B's client left; the leader did not change
	time.Sleep(50 * time.Millisecond)
	// The leader reads B's envelope after all (on a stream that B's
	// leaving ended, nobody is sending any more).
	select {
	case lead.read <- struct{}{}:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream no longer sends after client B left")
	}
	if err := <-errB; err != nil {
		t.Logf("client B: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.wait(ctx); err != nil {
		t.Fatalf("client A's answer after client B left: %v, want SUCCESS", err)
	}
	go func() { lead.read <- struct{}{} }()
	w, err := f.Forward(ctx, 1, raws[2])
	if err != nil {
		t.Fatalf("the next envelope after client B left: %v", err)
	}
	if err := w(ctx); err != nil {
		t.Fatalf("the next envelope's answer: %v", err)
	}
}

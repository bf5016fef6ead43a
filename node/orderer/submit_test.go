package orderer

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

// scriptedService answers Broadcast from a script (one answer per stream)
// and serves the blocks it holds to Deliver, from the requested start,
// waiting for more until the stream ends.
type scriptedService struct {
	ab.UnimplementedAtomicBroadcastServer
	mu      sync.Mutex
	answers []*ab.BroadcastResponse
	got     []*common.Envelope
	blocks  []*common.Block
	onSend  func(n int, env *common.Envelope) // after the nth envelope (1-based)
}

func (s *scriptedService) Broadcast(stream ab.AtomicBroadcast_BroadcastServer) error {
	env, err := stream.Recv()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.got = append(s.got, env)
	n := len(s.got)
	a := s.answers[min(n, len(s.answers))-1]
	s.mu.Unlock()
	if s.onSend != nil {
		s.onSend(n, env)
	}
	return stream.Send(a)
}

func (s *scriptedService) Deliver(stream ab.AtomicBroadcast_DeliverServer) error {
	env, err := stream.Recv()
	if err != nil {
		return err
	}
	pl := new(common.Payload)
	seek := new(ab.SeekInfo)
	if err := proto.Unmarshal(env.Payload, pl); err != nil {
		return err
	}
	if err := proto.Unmarshal(pl.Data, seek); err != nil {
		return err
	}
	next := uint64(0)
	if sp := seek.GetStart().GetSpecified(); sp != nil {
		next = sp.Number
	}
	newest := seek.GetStart().GetNewest() != nil
	for {
		s.mu.Lock()
		blocks := s.blocks
		s.mu.Unlock()
		if newest {
			if err := stream.Send(&ab.DeliverResponse{Type: &ab.DeliverResponse_Block{Block: blocks[len(blocks)-1]}}); err != nil {
				return err
			}
			return stream.Send(&ab.DeliverResponse{Type: &ab.DeliverResponse_Status{Status: common.Status_SUCCESS}})
		}
		for next < uint64(len(blocks)) {
			if err := stream.Send(&ab.DeliverResponse{Type: &ab.DeliverResponse_Block{Block: blocks[next]}}); err != nil {
				return err
			}
			next++
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *scriptedService) cut(envs ...*common.Envelope) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var data [][]byte
	for _, e := range envs {
		b, _ := proto.Marshal(e)
		data = append(data, b)
	}
	s.blocks = append(s.blocks, &common.Block{Header: &common.BlockHeader{Number: uint64(len(s.blocks))}, Data: &common.BlockData{Data: data}})
}

func serveScripted(t *testing.T, s *scriptedService) ab.AtomicBroadcastClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ab.RegisterAtomicBroadcastServer(srv, s)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ab.NewAtomicBroadcastClient(conn)
}

// TestSubmitResends: SERVICE_UNAVAILABLE is not final. The same envelope
// (same tx id) is sent again until another answer; when the resend is
// refused as a duplicate because a leader change ordered the first attempt
// after all, Submit finds it in the chain and answers SUCCESS with its
// block; an envelope never ordered is not reported as ordered.
func TestSubmitResends(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 10})
	id := c.identity(t, "m1", "writer")
	unavailable := &ab.BroadcastResponse{Status: common.Status_SERVICE_UNAVAILABLE, Info: "raft leader 1 was replaced while it held the forwarded envelope, which may or may not be ordered: resubmit"}
	dup := &ab.BroadcastResponse{Status: common.Status_BAD_REQUEST, Info: ErrDuplicate.Error() + ": x"}
	ok := &ab.BroadcastResponse{Status: common.Status_SUCCESS}
	newEnv := func() (*common.Envelope, string) {
		env, txid, err := NewTransaction(id, "ch", []byte("data"), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return env, txid
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("unavailable twice, then SUCCESS", func(t *testing.T) {
		s := &scriptedService{answers: []*ab.BroadcastResponse{unavailable, unavailable, ok}}
		s.cut()
		env, txid := newEnv()
		res, err := Submit(ctx, serveScripted(t, s), id, "ch", env, txid)
		if err != nil || res.Status != common.Status_SUCCESS || res.Attempts != 3 || res.Block != nil {
			t.Fatalf("%+v %v", res, err)
		}
		for i, got := range s.got {
			if !proto.Equal(got, env) {
				t.Fatalf("attempt %d sent another envelope", i+1)
			}
		}
	})
	t.Run("first attempt ordered after all: found in the chain", func(t *testing.T) {
		s := &scriptedService{answers: []*ab.BroadcastResponse{unavailable, dup}}
		s.cut()
		s.cut()
		env, txid := newEnv()
		// The block holding it is cut only after the duplicate answer:
		// Submit must wait for it.
		s.onSend = func(n int, env *common.Envelope) {
			if n == 2 {
				go func() { time.Sleep(100 * time.Millisecond); s.cut(env) }()
			}
		}
		res, err := Submit(ctx, serveScripted(t, s), id, "ch", env, txid)
		if err != nil || res.Status != common.Status_SUCCESS || res.Block == nil || *res.Block != 2 || res.Attempts != 2 {
			t.Fatalf("%+v %v", res, err)
		}
	})
	t.Run("duplicate but never in the chain: not SUCCESS", func(t *testing.T) {
		s := &scriptedService{answers: []*ab.BroadcastResponse{unavailable, dup}}
		s.cut()
		env, txid := newEnv()
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		defer scancel()
		res, err := Submit(sctx, serveScripted(t, s), id, "ch", env, txid)
		if err != nil || res.Status == common.Status_SUCCESS || res.Block != nil {
			t.Fatalf("%+v %v", res, err)
		}
	})
	t.Run("a duplicate at the first attempt is final", func(t *testing.T) {
		s := &scriptedService{answers: []*ab.BroadcastResponse{dup}}
		s.cut()
		env, txid := newEnv()
		res, err := Submit(ctx, serveScripted(t, s), id, "ch", env, txid)
		if err != nil || res.Status != common.Status_BAD_REQUEST || res.Attempts != 1 {
			t.Fatalf("%+v %v", res, err)
		}
	})
}

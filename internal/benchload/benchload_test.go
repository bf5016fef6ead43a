package benchload

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// server answers each envelope after a pause, SUCCESS unless its payload is
// "bad", and records the most envelopes a stream had unanswered.
type server struct {
	ab.UnimplementedAtomicBroadcastServer
	maxOpen atomic.Int64
}

func (s *server) Broadcast(st ab.AtomicBroadcast_BroadcastServer) error {
	got := make(chan *common.Envelope, 1<<16)
	var open atomic.Int64
	go func() {
		defer close(got)
		for {
			e, err := st.Recv()
			if err != nil {
				return
			}
			n := open.Add(1)
			for m := s.maxOpen.Load(); n > m && !s.maxOpen.CompareAndSwap(m, n); m = s.maxOpen.Load() {
			}
			got <- e
		}
	}()
	for e := range got {
		time.Sleep(50 * time.Microsecond)
		open.Add(-1)
		r := &ab.BroadcastResponse{Status: common.Status_SUCCESS}
		if string(e.Payload) == "bad" {
			r = &ab.BroadcastResponse{Status: common.Status_BAD_REQUEST, Info: "bad payload"}
		}
		if err := st.Send(r); err != nil {
			return err
		}
	}
	return nil
}

func start(t *testing.T) (*server, ab.AtomicBroadcastClient) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{}
	gs := grpc.NewServer()
	ab.RegisterAtomicBroadcastServer(gs, s)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, ab.NewAtomicBroadcastClient(conn)
}

func envs(n int, bad int) []*common.Envelope {
	out := make([]*common.Envelope, n)
	for i := range out {
		out[i] = &common.Envelope{Payload: []byte("ok")}
	}
	for i := range bad {
		out[i*7%n].Payload = []byte("bad")
	}
	return out
}

func TestRunCountsAnswersAndBoundsTheWindow(t *testing.T) {
	s, c := start(t)
	r := Run(c, envs(2000, 3), 4, 0, 10)
	if r.OK != 1997 || len(r.Lat) != 2000 || r.Other["BAD_REQUEST: bad payload"] != 3 {
		t.Fatalf("OK %d, %d latencies, other %v; want 1997, 2000, 3 BAD_REQUEST", r.OK, len(r.Lat), r.Other)
	}
	if m := s.maxOpen.Load(); m > 10 {
		t.Fatalf("a stream had %d envelopes unanswered, window 10", m)
	}
}

func TestRunPaced(t *testing.T) {
	_, c := start(t)
	r := Run(c, envs(200, 0), 2, 1000, 0)
	if r.OK != 200 || r.Elapsed < 190*time.Millisecond {
		t.Fatalf("OK %d in %v; want 200 in at least 190 ms at 1,000 tx/s", r.OK, r.Elapsed)
	}
}

func TestPercentile(t *testing.T) {
	lat := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	if p50, p99 := Percentile(lat, 0.5), Percentile(lat, 0.99); p50 != 6 || p99 != 10 {
		t.Fatalf("p50 %v p99 %v; want 6 and 10", p50, p99)
	}
	if Percentile(nil, 0.5) != 0 {
		t.Fatal("empty: want 0")
	}
}

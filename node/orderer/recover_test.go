package orderer

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/memberd/memberd/internal/logtest"
	"github.com/memberd/memberd/node/block"
)

// TestHandlerPanicFailsOnlyThatCall: with RecoveryOptions, a panic while
// serving a Broadcast (here in Lookup, on the stream's own goroutine) and
// a panic in a unary handler fail that call with codes.Internal, are
// logged with the stack and counted; the server answers the next call.
func TestHandlerPanicFailsOnlyThatCall(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{})
	envs, _ := envelopes(t, c.identity(t, "m1", "client"), 2, 10)
	var calls atomic.Int32
	lookup := func(string) *Node {
		if calls.Add(1) == 1 {
			var m map[string]int
			m["x"]++ // a real runtime panic
		}
		return nil // then: channel not served here
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	var logs logtest.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	srv, err := NewServer(ServerConfig{Lookup: lookup, Metrics: m, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(ServerOptions(), RecoveryOptions(log, m)...)...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	defer gs.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := ab.NewAtomicBroadcastClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	send := func(env *common.Envelope) (*ab.BroadcastResponse, error) {
		st, err := client.Broadcast(ctx)
		if err != nil {
			return nil, err
		}
		if err := st.Send(env); err != nil {
			return nil, err
		}
		return st.Recv()
	}
	if _, err := send(envs[0]); status.Code(err) != codes.Internal {
		t.Fatalf("Broadcast that panicked: %v, want codes.Internal", err)
	}
	if r, err := send(envs[1]); err != nil || r.Status != common.Status_NOT_FOUND {
		t.Fatalf("next Broadcast: %v %v, want NOT_FOUND", r, err)
	}

	// A unary handler, through the same interceptors.
	r := recoverer{log: log, m: m}
	_, err = r.unary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/test/Unary"}, func(context.Context, any) (any, error) {
		panic(errors.New("unary bug"))
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("unary: %v, want codes.Internal", err)
	}

	if n := logtest.Counter(t, reg, "memberd_ledger_panics_total"); n != 2 {
		t.Errorf("memberd_ledger_panics_total = %v, want 2", n)
	}
	for _, want := range []string{"assignment to entry in nil map", "unary bug", "recover_test.go", "/orderer.AtomicBroadcast/Broadcast"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

// panicFollower panics in its first FollowBlocks (as a bug parsing a
// peer's data would) and counts the streams asked after it.
type panicFollower struct{ calls atomic.Int32 }

func (f *panicFollower) FollowBlocks(ctx context.Context, _ uint64, fn func([]byte) error) error {
	if f.calls.Add(1) == 1 {
		var m map[string]int
		m["x"]++ // a real runtime panic
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestCopyStreamPanicEndsThatStreamOnly: a panic in the copy stream's
// goroutine is logged with its stack and counted, and the stream asks the
// next peer; the process goes on.
func TestCopyStreamPanicEndsThatStreamOnly(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	var logs logtest.Buffer
	n := &Node{log: slog.New(slog.NewTextHandler(&logs, nil)), cfg: Config{Metrics: m}}
	s := &copyStream{got: map[uint64]*common.Block{}, from: 1, arrived: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithCancelCause(t.Context())
	s.cancel = cancel
	f := &panicFollower{}
	go s.run(ctx, n, f)
	deadline := time.Now().Add(10 * time.Second)
	for f.calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	s.stop()
	if f.calls.Load() < 2 {
		t.Fatal("the copy stream asked no other peer after a panic")
	}
	if got := logtest.Counter(t, reg, "memberd_ledger_panics_total"); got != 1 {
		t.Errorf("memberd_ledger_panics_total = %v, want 1", got)
	}
	for _, want := range []string{"assignment to entry in nil map", "recover_test.go"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

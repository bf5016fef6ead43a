package orderer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/memberd/memberd/node/block"
)

func TestReasonOf(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range reasons {
		if seen[r.reason] {
			t.Fatalf("reason %q used twice", r.reason)
		}
		seen[r.reason] = true
		if got := ReasonOf(fmt.Errorf("context: %w", r.err)); got != r.reason {
			t.Errorf("ReasonOf(wrapped %v) = %q, want %q", r.err, got, r.reason)
		}
	}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, "success"},
		{"unknown", errors.New("boom"), "other"},
		{"duplicate is more specific than bad request", fmt.Errorf("%w: %w", ErrBadRequest, ErrDuplicate), "duplicate"},
		{"not leader over unavailable", fmt.Errorf("%w: %w", ErrUnavailable, ErrNotLeader), "not_leader"},
		{"bad signature over forbidden", fmt.Errorf("%w: %w", ErrForbidden, block.ErrBadSignature), "bad_signature"},
	} {
		if got := ReasonOf(tc.err); got != tc.want {
			t.Errorf("%s: ReasonOf = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestMetrics: Broadcast answers are counted by status and reason with a
// commit latency per SUCCESS, Deliver by final status and blocks sent, the
// block store appends are timed, and the registry collector exports the
// channel's height and committed transactions.
func TestMetrics(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 5, BatchTimeout: 50 * time.Millisecond})
	preg := prometheus.NewRegistry()
	m := NewMetrics(preg)
	reg := testRegistry(t, c, m)
	defer reg.Close()
	go reg.Run(t.Context())
	preg.MustRegister(NewRegistryCollector(reg))
	if _, err := reg.Join(context.Background(), c.genesis); err != nil {
		t.Fatal(err)
	}
	n := reg.Lookup("trade")
	deadline := time.Now().Add(10 * time.Second)
	for !n.IsLeader() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	srv, err := NewServer(ServerConfig{Lookup: reg.Lookup, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
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

	id := c.identity(t, "m1", "client")
	envs, ids := envelopes(t, id, 5, 100)
	res := newLoadResult()
	if _, err := broadcast(ctx, client, envs, ids, res); err != nil || len(res.success) != 5 {
		t.Fatalf("broadcast: %v, %d SUCCESS, other %v", err, len(res.success), res.other)
	}
	res = newLoadResult()
	if _, err := broadcast(ctx, client, envs[:3], ids[:3], res); err != nil || res.other[common.Status_BAD_REQUEST] != 3 {
		t.Fatalf("duplicates: %v, answers %v", err, res.other)
	}
	h := n.Height()
	if err := Fetch(ctx, client, id, "trade", SeekRange(0, h-1, ab.SeekInfo_FAIL_IF_NOT_READY), func(*common.Block) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := Fetch(ctx, client, id, "trade", SeekRange(h+5, h+5, ab.SeekInfo_FAIL_IF_NOT_READY), func(*common.Block) error { return nil }); !errors.Is(err, ErrStatus) {
		t.Fatalf("fetch past the height: %v, want NOT_FOUND", err)
	}

	for _, tc := range []struct {
		name string
		c    prometheus.Metric
		want float64
	}{
		{"broadcast success", m.broadcast.WithLabelValues("SUCCESS", "success"), 5},
		{"broadcast duplicate", m.broadcast.WithLabelValues("BAD_REQUEST", "duplicate"), 3},
		{"deliver success", m.deliver.WithLabelValues("SUCCESS"), 1},
		{"deliver not found", m.deliver.WithLabelValues("NOT_FOUND"), 1},
		{"blocks sent", m.deliverBlocks, float64(h)},
	} {
		var d dto.Metric
		if err := tc.c.Write(&d); err != nil {
			t.Fatal(err)
		}
		if got := d.GetCounter().GetValue(); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, got, tc.want)
		}
	}
	fams, err := preg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.Metric{}
	for _, f := range fams {
		for _, mm := range f.GetMetric() {
			got[f.GetName()] = mm
		}
	}
	if c := got["memberd_ledger_broadcast_commit_seconds"].GetHistogram().GetSampleCount(); c != 5 {
		t.Errorf("commit latency samples = %d, want 5", c)
	}
	if c := got["memberd_ledger_block_append_seconds"].GetHistogram().GetSampleCount(); c < 1 {
		t.Errorf("append latency samples = %d, want >= 1", c)
	}
	if v := got["memberd_ledger_height"].GetGauge().GetValue(); v != float64(h) {
		t.Errorf("memberd_ledger_height = %v, want %d", v, h)
	}
	if v := got["memberd_ledger_transactions_total"].GetCounter().GetValue(); v != 5 {
		t.Errorf("memberd_ledger_transactions_total = %v, want 5", v)
	}
	if l := got["memberd_ledger_height"].GetLabel(); len(l) != 1 || l[0].GetValue() != "trade" {
		t.Errorf("memberd_ledger_height labels %v, want channel=trade", l)
	}
}

package appliance

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/stats"
)

// deliverBytes counts the blocks this appliance pulled from other
// consenters over Deliver (a catch-up behind a raft snapshot), as block
// bytes and as bytes on the wire (compressed; gRPC framing excluded), so
// that a catch-up's rate can be set beside the path's: the tunnel and
// the relays' per-member rate carry the wire bytes.
type deliverBytes struct {
	vec *prometheus.CounterVec
}

var _ stats.Handler = deliverBytes{}

func newDeliverBytes(reg prometheus.Registerer) deliverBytes {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "memberd_ledger_fetched_bytes_total",
		Help: "Bytes of the Deliver answers this appliance received from other consenters (catch-up): kind=payload the messages, kind=wire as they crossed the tunnel (compressed)."},
		[]string{"kind"})
	vec.WithLabelValues("payload")
	vec.WithLabelValues("wire")
	if reg != nil {
		reg.MustRegister(vec)
	}
	return deliverBytes{vec: vec}
}

type deliverRPCKey struct{}

// TagRPC marks Deliver calls.
func (d deliverBytes) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info != nil && strings.HasSuffix(info.FullMethodName, "/Deliver") {
		return context.WithValue(ctx, deliverRPCKey{}, true)
	}
	return ctx
}

// HandleRPC counts what a Deliver call received.
func (d deliverBytes) HandleRPC(ctx context.Context, s stats.RPCStats) {
	in, ok := s.(*stats.InPayload)
	if !ok || ctx.Value(deliverRPCKey{}) == nil {
		return
	}
	d.vec.WithLabelValues("payload").Add(float64(max(in.Length, 0)))
	d.vec.WithLabelValues("wire").Add(float64(max(in.CompressedLength, 0)))
}

func (deliverBytes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (deliverBytes) HandleConn(context.Context, stats.ConnStats) {}

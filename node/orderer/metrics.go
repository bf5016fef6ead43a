package orderer

import (
	"errors"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/memberd/memberd/node/block"
)

// Metrics are the ordering service's Prometheus metrics, shared by a
// Server and the Nodes of a process (ServerConfig.Metrics, Config.Metrics).
// A nil *Metrics records nothing.
//
//	memberd_ledger_broadcast_total{status,reason}  Broadcast answers
//	memberd_ledger_broadcast_commit_seconds        admission -> SUCCESS answer
//	memberd_ledger_deliver_requests_total{status}  Deliver requests by final status
//	memberd_ledger_deliver_blocks_total            blocks sent by Deliver
//	memberd_ledger_deliver_streams                 open Deliver streams
//	memberd_ledger_block_append_seconds            block store append + fsync per batch
//	memberd_ledger_panics_total                    gRPC calls or copy streams failed because they panicked (RecoveryOptions, copy stream)
//	memberd_ledger_config_blocks_total{result}     config entries applied: stored, or refused (differs from the policy)
//	memberd_ledger_copies_refused_total            other consenters' copies refused: signatures the config in force rejects
//
// NewRegistryCollector adds the per-channel gauges (height, committed
// transactions, transactions waiting for their block).
type Metrics struct {
	broadcast      *prometheus.CounterVec
	commitLatency  prometheus.Histogram
	deliver        *prometheus.CounterVec
	deliverBlocks  prometheus.Counter
	deliverStreams prometheus.Gauge
	appendLatency  prometheus.Histogram
	panics         prometheus.Counter
	configBlocks   *prometheus.CounterVec
	copiesRefused  prometheus.Counter
}

// NewMetrics makes the metrics and registers them with reg (nil: not
// registered, still counted).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		broadcast: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "memberd_ledger_broadcast_total",
			Help: "Broadcast answers by status and reason (success, or why the envelope was refused)."}, []string{"status", "reason"}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "memberd_ledger_broadcast_commit_seconds",
			Help:    "Time from admitting a Broadcast envelope to its SUCCESS answer (block committed and stored).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}), // 5ms .. 41s
		deliver: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "memberd_ledger_deliver_requests_total",
			Help: "Deliver requests by final status."}, []string{"status"}),
		deliverBlocks: prometheus.NewCounter(prometheus.CounterOpts{Name: "memberd_ledger_deliver_blocks_total",
			Help: "Blocks sent by Deliver."}),
		deliverStreams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "memberd_ledger_deliver_streams",
			Help: "Open Deliver streams."}),
		appendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "memberd_ledger_block_append_seconds",
			Help:    "Time to append a batch of committed blocks to the block store, fsync included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}), // 0.5ms .. 4s
		panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "memberd_ledger_panics_total",
			Help: "gRPC calls or copy streams from a peer failed because handling them panicked (a bug: the log has the stack)."}),
		configBlocks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "memberd_ledger_config_blocks_total",
			Help: "Committed config entries: stored (a CONFIG block put in force), or refused (not the transaction derived from the policy version it names)."}, []string{"result"}),
		copiesRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "memberd_ledger_copies_refused_total",
			Help: "Other consenters' copies of a block this node may not sign, refused because their signatures do not satisfy /Channel/Orderer/BlockValidation of the config in force (the node asks another peer)."}),
	}
	if reg != nil {
		reg.MustRegister(m.broadcast, m.commitLatency, m.deliver, m.deliverBlocks, m.deliverStreams, m.appendLatency, m.panics, m.configBlocks, m.copiesRefused)
	}
	return m
}

func (m *Metrics) broadcastDone(err error, admitted time.Time, now time.Time) {
	if m == nil {
		return
	}
	m.broadcast.WithLabelValues(StatusOf(err).String(), ReasonOf(err)).Inc()
	if err == nil && !admitted.IsZero() {
		m.commitLatency.Observe(now.Sub(admitted).Seconds())
	}
}

func (m *Metrics) deliverDone(st common.Status) {
	if m != nil && st != common.Status_UNKNOWN {
		m.deliver.WithLabelValues(st.String()).Inc()
	}
}

// configBlock counts a committed config entry: "stored" or "refused".
func (m *Metrics) configBlock(result string) {
	if m != nil {
		m.configBlocks.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) copyRefused() {
	if m != nil {
		m.copiesRefused.Inc()
	}
}

func (m *Metrics) panicked() {
	if m != nil {
		m.panics.Inc()
	}
}

func (m *Metrics) blockSent() {
	if m != nil {
		m.deliverBlocks.Inc()
	}
}

func (m *Metrics) streamOpen(delta float64) {
	if m != nil {
		m.deliverStreams.Add(delta)
	}
}

func (m *Metrics) appended(d time.Duration) {
	if m != nil {
		m.appendLatency.Observe(d.Seconds())
	}
}

// reasons maps each sentinel error to its metric label, most specific
// first (an error may wrap several).
var reasons = []struct {
	err    error
	reason string
}{
	{ErrDuplicate, "duplicate"},
	{block.ErrTooLarge, "too_large"},
	{ErrNotImplemented, "not_implemented"},
	{ErrConfigUpdate, "config_update"},
	{block.ErrWrongChannel, "wrong_channel"},
	{ErrNotFound, "not_found"},
	{block.ErrBadSignature, "bad_signature"},
	{block.ErrHighS, "high_s"},
	{block.ErrUnsupportedKey, "unsupported_key"},
	{ErrForbidden, "forbidden"},
	{ErrNotLeader, "not_leader"},
	{ErrClosed, "closed"},
	{ErrCatchUp, "catch_up"},
	{ErrUnavailable, "unavailable"},
	{block.ErrHeaderType, "header_type"},
	{block.ErrTxID, "tx_id"},
	{block.ErrNoCreator, "no_creator"},
	{block.ErrMalformed, "malformed"},
	{ErrBadRequest, "bad_request"},
}

// ReasonOf names why err refused an envelope, as a stable snake_case label
// ("success" for nil, "other" for an error of no known kind).
func ReasonOf(err error) string {
	if err == nil {
		return "success"
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "other"
}

// registryCollector exports per-channel gauges of the nodes of a Registry
// at every scrape.
type registryCollector struct {
	r                    *Registry
	height, txs, pending *prometheus.Desc
}

var _ prometheus.Collector = (*registryCollector)(nil)

// NewRegistryCollector returns a collector of the per-channel gauges of r's
// nodes: memberd_ledger_height{channel} (blocks stored),
// memberd_ledger_transactions_total{channel} (envelopes in blocks committed
// since start) and memberd_ledger_pending_transactions{channel} (admitted
// on this node, waiting for their block).
func NewRegistryCollector(r *Registry) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"channel"}, nil)
	}
	return &registryCollector{r: r,
		height:  d("memberd_ledger_height", "Blocks in the channel's block store."),
		txs:     d("memberd_ledger_transactions_total", "Envelopes in blocks this node committed since it started."),
		pending: d("memberd_ledger_pending_transactions", "Envelopes admitted on this node and waiting for their block."),
	}
}

func (c *registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.height
	ch <- c.txs
	ch <- c.pending
}

func (c *registryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, n := range c.r.nodesNow() {
		ch <- prometheus.MustNewConstMetric(c.height, prometheus.GaugeValue, float64(n.Height()), n.channel)
		ch <- prometheus.MustNewConstMetric(c.txs, prometheus.CounterValue, float64(n.ordered.Load()), n.channel)
		n.mu.Lock()
		pending := len(n.waiters)
		n.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(pending), n.channel)
	}
}

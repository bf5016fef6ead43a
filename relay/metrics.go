package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics counts what a relay server or client does. The prometheus
// collectors are registered only when a Registerer is given; the atomic
// counters behind Drops work either way.
type metrics struct {
	drops     *reasonCounter
	offers    *reasonCounter // policy bundle offers by result (server only)
	closes    *reasonCounter // connections the server closed, by reason (server only)
	dlog      *dropLog       // server only: drops logged, rate-limited; nil logs none
	forwarded prometheus.Counter
	fwdBytes  prometheus.Counter
	conns     prometheus.Gauge
	panics    prometheus.Counter // connections closed because serving them panicked
	copied    prometheus.Counter // client only: packets also sent on a backup relay
}

// reasonCounter is a counter by label value, exported to prometheus and
// readable without it (Drops, PolicyOffers).
type reasonCounter struct {
	vec *prometheus.CounterVec
	mu  sync.Mutex
	n   map[string]*atomic.Uint64
}

func newReasonCounter(name, help, label string, values []string) *reasonCounter {
	c := &reasonCounter{vec: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label}),
		n: map[string]*atomic.Uint64{}}
	for _, v := range values {
		c.n[v] = new(atomic.Uint64)
		c.vec.WithLabelValues(v) // export zeroes
	}
	return c
}

func (c *reasonCounter) inc(v string) {
	c.vec.WithLabelValues(v).Inc()
	c.mu.Lock()
	n := c.n[v]
	if n == nil {
		n = new(atomic.Uint64)
		c.n[v] = n
	}
	c.mu.Unlock()
	n.Add(1)
}

// snapshot returns the counts by label value (zeros omitted).
func (c *reasonCounter) snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]uint64{}
	for v, n := range c.n {
		if x := n.Load(); x > 0 {
			out[v] = x
		}
	}
	return out
}

func newMetrics(reg prometheus.Registerer, prefix, what string) *metrics {
	m := &metrics{
		drops: newReasonCounter(prefix+"_dropped_packets_total", "Packets the "+what+" dropped, by reason.", "reason",
			[]string{DropACL, DropRateLimit, DropQueueFull, DropNoRoute, DropTooLarge, DropMalformed, DropClosed,
				DropUnknownType, DropUnexpected}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "_forwarded_packets_total",
			Help: "Packets the " + what + " sent on.",
		}),
		fwdBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "_forwarded_bytes_total",
			Help: "Payload bytes the " + what + " sent on.",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "_connections",
			Help: "Connections of the " + what + " that are up.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "_panics_total",
			Help: "Connections of the " + what + " closed because serving them panicked (a bug: the log has the stack).",
		}),
		copied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "_backup_copies_total",
			Help: "Packets the " + what + " also sent through a second relay because the one in use had gone quiet.",
		}),
		offers: newReasonCounter(prefix+"_policy_offers_total", "Signed policy bundles members offered, by result.", "result", offerResults),
		closes: newReasonCounter(prefix+"_closed_connections_total", "Admitted connections the "+what+" closed, by reason.", "reason",
			[]string{CloseIdle, CloseEvicted, CloseNotAdmitted}),
	}
	if reg != nil {
		// A second server or client on one registry shares the first one's
		// collectors, so the exported counts cover both.
		m.drops.vec = register(reg, m.drops.vec)
		m.forwarded = register(reg, m.forwarded)
		m.fwdBytes = register(reg, m.fwdBytes)
		m.conns = register(reg, m.conns)
		m.panics = register(reg, m.panics)
		if what == "relay" {
			m.offers.vec = register(reg, m.offers.vec)
			m.closes.vec = register(reg, m.closes.vec)
		} else {
			m.copied = register(reg, m.copied)
		}
	}
	return m
}

// drop counts a dropped packet or frame and logs it (rate-limited).
func (m *metrics) drop(reason string) { m.dropWith(reason) }

// dropWith is drop with attributes for the log line.
func (m *metrics) dropWith(reason string, attrs ...any) {
	m.drops.inc(reason)
	if m.dlog != nil {
		m.dlog.note(reason, attrs...)
	}
}

// dropLog logs drops at most once per reason per interval (WARN; INFO for
// "closed", which every disconnect with packets in flight causes), each
// line with how many drops of that reason it stands for: a member flooding
// over its rate, or sending garbage, writes a few lines, not one per packet.
type dropLog struct {
	log   *slog.Logger
	limit *logLimiter
	now   func() time.Time
}

const dropLogEvery = 10 * time.Second

func newDropLog(log *slog.Logger, now func() time.Time) *dropLog {
	return &dropLog{log: log, limit: newLogLimiter(dropLogEvery), now: now}
}

func (d *dropLog) note(reason string, attrs ...any) {
	suppressed, ok := d.limit.allow(reason, d.now())
	if !ok {
		return
	}
	level := slog.LevelWarn
	if reason == DropClosed {
		level = slog.LevelInfo
	}
	attrs = append([]any{"reason", reason, "more_since_last_line", suppressed, "log_every", d.limit.interval.String()}, attrs...)
	d.log.Log(context.Background(), level, "relay dropped a packet or frame", attrs...)
}

// Reasons an admitted connection was closed by the relay, the values of
// memberd_relay_closed_connections_total's "reason" label.
const (
	CloseIdle        = "idle"         // nothing received for IdleTimeout
	CloseEvicted     = "evicted"      // the member's oldest, over MaxConnsPerMember
	CloseNotAdmitted = "not_admitted" // a new policy no longer admits the peer
)

func (m *metrics) offer(result string) { m.offers.inc(result) }

func (m *metrics) forward(n int) {
	m.forwarded.Inc()
	m.fwdBytes.Add(float64(n))
}

// snapshot returns the drop counts by reason (zeros omitted).
func (m *metrics) snapshot() map[string]uint64 { return m.drops.snapshot() }

func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

package relay

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics counts what a relay server or client does. The prometheus
// collectors are registered only when a Registerer is given; the atomic
// counters behind Drops work either way.
type metrics struct {
	dropped   *prometheus.CounterVec
	forwarded prometheus.Counter
	fwdBytes  prometheus.Counter
	conns     prometheus.Gauge

	mu    sync.Mutex
	drops map[string]*atomic.Uint64
}

func newMetrics(reg prometheus.Registerer, prefix, what string) *metrics {
	m := &metrics{
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_dropped_packets_total",
			Help: "Packets the " + what + " dropped, by reason.",
		}, []string{"reason"}),
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
		drops: map[string]*atomic.Uint64{},
	}
	for _, r := range []string{DropACL, DropRateLimit, DropQueueFull, DropNoRoute, DropTooLarge, DropMalformed, DropClosed} {
		m.drops[r] = new(atomic.Uint64)
		m.dropped.WithLabelValues(r) // export zeroes
	}
	if reg != nil {
		// A second server or client on one registry shares the first one's
		// collectors, so the exported counts cover both.
		m.dropped = register(reg, m.dropped)
		m.forwarded = register(reg, m.forwarded)
		m.fwdBytes = register(reg, m.fwdBytes)
		m.conns = register(reg, m.conns)
	}
	return m
}

func (m *metrics) drop(reason string) {
	m.dropped.WithLabelValues(reason).Inc()
	m.mu.Lock()
	c := m.drops[reason]
	if c == nil {
		c = new(atomic.Uint64)
		m.drops[reason] = c
	}
	m.mu.Unlock()
	c.Add(1)
}

func (m *metrics) forward(n int) {
	m.forwarded.Inc()
	m.fwdBytes.Add(float64(n))
}

// snapshot returns the drop counts by reason (zeros omitted).
func (m *metrics) snapshot() map[string]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]uint64{}
	for r, c := range m.drops {
		if v := c.Load(); v > 0 {
			out[r] = v
		}
	}
	return out
}

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

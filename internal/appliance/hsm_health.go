package appliance

import (
	"context"
	"crypto"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memberd/memberd/hsm"
)

// hsmHealth checks the identity key in the HSM every interval with a
// self-test signature, so that a token that went away (unplugged, its
// SoftHSM2 folder removed or unreadable) shows in /readyz, /status and the
// metrics memberd_hsm_up and memberd_hsm_check_failures_total before the
// next block, attestation or relay handshake needs it, and its return too.
type hsmHealth struct {
	key      func() crypto.Signer
	interval time.Duration
	log      *slog.Logger
	up       prometheus.Gauge
	failures prometheus.Counter

	mu      sync.Mutex // guards the fields below
	err     error      // the last check's error; nil when it passed
	since   time.Time  // when the current state (up or failing) began
	checked time.Time  // when the last check ended
}

// hsmCheckEvery is how often the appliance signs a self-test digest.
const hsmCheckEvery = 2 * time.Second

func newHSMHealth(key func() crypto.Signer, reg prometheus.Registerer, log *slog.Logger) *hsmHealth {
	h := &hsmHealth{key: key, interval: hsmCheckEvery, log: log,
		up: prometheus.NewGauge(prometheus.GaugeOpts{Name: "memberd_hsm_up",
			Help: "1 when the last self-test signature with the identity key in the HSM succeeded, else 0."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "memberd_hsm_check_failures_total",
			Help: "Self-test signatures with the identity key in the HSM that failed."}),
		since: time.Now()}
	h.up.Set(1) // the key signed at start-up
	if reg != nil {
		reg.MustRegister(h.up, h.failures)
	}
	return h
}

// run checks until ctx ends.
func (h *hsmHealth) run(ctx context.Context) {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.check(ctx)
	}
}

func (h *hsmHealth) check(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := hsm.SelfTest(cctx, h.key())
	cancel()
	if ctx.Err() != nil {
		return
	}
	now := time.Now()
	h.mu.Lock()
	was, before := h.err, h.since
	h.err, h.checked = err, now
	if (was == nil) != (err == nil) {
		h.since = now
	}
	h.mu.Unlock()
	switch {
	case err != nil:
		h.failures.Inc()
		h.up.Set(0)
		if was == nil {
			h.log.Error("the identity key in the HSM cannot sign: new blocks, WireGuard key attestations and relay connections fail until it is back; check that the HSM (token) is present and readable",
				"err", err)
		}
	case was != nil:
		h.up.Set(1)
		h.log.Info("the identity key in the HSM signs again", "failed_for", now.Sub(before).Round(time.Millisecond))
	}
}

// ready is the /readyz check "hsm".
func (h *hsmHealth) ready(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// status is the "hsm" part of /status.
func (h *hsmHealth) status() map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	doc := map[string]any{"ok": h.err == nil, "since": h.since.UTC(), "last_check": h.checked.UTC()}
	if h.err != nil {
		doc["error"] = h.err.Error()
	}
	return doc
}

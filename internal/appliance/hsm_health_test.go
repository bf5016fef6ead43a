package appliance

import (
	"context"
	"crypto"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/memberd/memberd/hsm/hsmtest"
)

// TestHSMHealth: with a real SoftHSM2 key, the check passes; with the token
// folder moved away it fails, /readyz's check names the token, the gauge is
// 0 and failures are counted; once the folder is back it passes again.
func TestHSMHealth(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	tok.GenerateKey(t, "id")
	s := tok.OpenKey(t, "id", nil)
	reg := prometheus.NewRegistry()
	h := newHSMHealth(func() crypto.Signer { return s }, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	h.check(ctx)
	if err := h.ready(ctx); err != nil {
		t.Fatalf("check fails with the token present: %v", err)
	}
	tokens := filepath.Join(tok.Dir, "tokens")
	if err := os.Rename(tokens, tokens+".gone"); err != nil {
		t.Fatal(err)
	}
	moved := true
	defer func() {
		if moved {
			os.Rename(tokens+".gone", tokens)
		}
	}()
	h.check(ctx)
	err := h.ready(ctx)
	if err == nil || !strings.Contains(err.Error(), `"member-a"`) {
		t.Fatalf("with the token gone, the check says %v; want an error naming token \"member-a\"", err)
	}
	if up := metricValue(h.up); up != 0 {
		t.Errorf("memberd_hsm_up = %v with the token gone, want 0", up)
	}
	if n := metricValue(h.failures); n != 1 {
		t.Errorf("memberd_hsm_check_failures_total = %v, want 1", n)
	}
	if st := h.status(); st["ok"] != false || st["error"] == nil {
		t.Errorf("status with the token gone: %v", st)
	}
	if err := os.Rename(tokens+".gone", tokens); err != nil {
		t.Fatal(err)
	}
	moved = false
	start := time.Now()
	for h.check(ctx); h.ready(ctx) != nil; h.check(ctx) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("check still fails 10 s after the token is back: %v", h.ready(ctx))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if up := metricValue(h.up); up != 1 {
		t.Errorf("memberd_hsm_up = %v after recovery, want 1", up)
	}
}

// metricValue reads a gauge or counter.
func metricValue(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetCounter().GetValue()
}

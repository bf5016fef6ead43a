package main

import (
	"math"
	"testing"
)

// TestHistQuantile: the benchmark's percentiles from cumulative buckets,
// interpolated as Prometheus's histogram_quantile does, and the exact
// share above a bound.
func TestHistQuantile(t *testing.T) {
	// 100 round trips: 50 in (0, 10 ms], 40 in (10, 20], 9 in (20, 50], 1 in (50, 100].
	h := hist{0.01: 50, 0.02: 90, 0.05: 99, 0.1: 100, math.Inf(1): 100}
	if got := h.quantile(0.5); math.Abs(got-10) > 1e-9 {
		t.Errorf("p50 = %g ms, want 10", got)
	}
	if got := h.quantile(0.7); math.Abs(got-15) > 1e-9 {
		t.Errorf("p70 = %g ms, want 15", got)
	}
	if got := h.quantile(0.99); math.Abs(got-50) > 1e-9 {
		t.Errorf("p99 = %g ms, want 50", got)
	}
	if got := h.above(0.05); math.Abs(got-0.01) > 1e-9 {
		t.Errorf("above 50 ms = %g, want 0.01", got)
	}
	if got := h.slowest(); got != "<= 100 ms" {
		t.Errorf("slowest = %q, want <= 100 ms", got)
	}
	if h.count() != 100 {
		t.Errorf("count = %d, want 100", h.count())
	}
	inf := hist{0.01: 0, 5: 0, math.Inf(1): 2}
	if got := inf.quantile(0.99); got != 5000 {
		t.Errorf("p99 past the last bound = %g ms, want the bound, 5000", got)
	}
	if got := inf.slowest(); got != "> 5000 ms" {
		t.Errorf("slowest = %q, want > 5000 ms", got)
	}
	d := h.minus(hist{0.01: 50, 0.02: 50, 0.05: 50, 0.1: 50, math.Inf(1): 50})
	if d.count() != 50 || d.quantile(0.5) < 10 {
		t.Errorf("difference: count %d, p50 %g ms; want 50 round trips above 10 ms", d.count(), d.quantile(0.5))
	}
}

package testenv

import (
	"regexp"
	"strconv"
)

// MetricByLabel reads the samples of metric name in body (a /metrics page
// in the Prometheus text format) whose only label is label, keyed by that
// label's value; e.g. MetricByLabel(body, "memberd_ledger_fetched_bytes_total",
// "kind")["wire"]. Samples with other labels are not read.
func MetricByLabel(body, name, label string) map[string]float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{` + regexp.QuoteMeta(label) + `="([^"]*)"\} ([0-9.eE+-]+)$`)
	out := map[string]float64{}
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		if v, err := strconv.ParseFloat(m[2], 64); err == nil {
			out[m[1]] = v
		}
	}
	return out
}

// MetricSumByLabel reads the samples of metric name in body that carry
// label, whatever their other labels, and sums them by that label's
// value; e.g. MetricSumByLabel(body, "raft_received_bytes_total",
// "kind")["wire"] over every channel of a member.
func MetricSumByLabel(body, name, label string) map[string]float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{([^}]*)\} ([0-9.eE+-]+)$`)
	lre := regexp.MustCompile(`(?:^|,)` + regexp.QuoteMeta(label) + `="([^"]*)"`)
	out := map[string]float64{}
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		l := lre.FindStringSubmatch(m[1])
		if l == nil {
			continue
		}
		if v, err := strconv.ParseFloat(m[2], 64); err == nil {
			out[l[1]] += v
		}
	}
	return out
}

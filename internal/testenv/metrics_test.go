package testenv

import "testing"

func TestMetricByLabel(t *testing.T) {
	body := "# HELP x\nmemberd_ledger_fetched_bytes_total{kind=\"payload\"} 4.5e+07\nmemberd_ledger_fetched_bytes_total{kind=\"wire\"} 1.2e+07\n" +
		"memberd_ledger_fetched_bytes_total_other{kind=\"wire\"} 9\nmemberd_ledger_fetched_bytes_total{kind=\"x\",peer=\"a\"} 7\n"
	got := MetricByLabel(body, "memberd_ledger_fetched_bytes_total", "kind")
	if len(got) != 2 || got["payload"] != 4.5e7 || got["wire"] != 1.2e7 {
		t.Fatalf("%v", got)
	}
}

func TestMetricSumByLabel(t *testing.T) {
	body := "raft_received_bytes_total{cluster=\"a\",kind=\"payload\",node=\"1\"} 100\n" +
		"raft_received_bytes_total{cluster=\"b\",kind=\"payload\",node=\"1\"} 50\n" +
		"raft_received_bytes_total{cluster=\"a\",kind=\"wire\",node=\"1\"} 10\n" +
		"raft_received_bytes_total{cluster=\"a\",subkind=\"wire\"} 7\n" +
		"raft_received_bytes_total_other{kind=\"wire\"} 9\n" +
		"raft_received_bytes_total{kind=\"wire\"} 1e+01\n"
	got := MetricSumByLabel(body, "raft_received_bytes_total", "kind")
	if len(got) != 2 || got["payload"] != 150 || got["wire"] != 20 {
		t.Fatalf("%v", got)
	}
}

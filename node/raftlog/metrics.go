package raftlog

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports Status on every scrape, labelled with the cluster and
// node, so several channels in one process do not collide.
type collector struct {
	n                                                 *Node
	leader, isLeader, term, commit, applied, snapshot *prometheus.Desc
	logBytes                                          *prometheus.Desc
	sent, received, dropped, panics                   *prometheus.Desc
	silent, retired                                   *prometheus.Desc
	hbRTT                                             *prometheus.Desc
	sentBytes, receivedBytes                          *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

func newCollector(n *Node) *collector {
	l := prometheus.Labels{"cluster": n.cfg.Cluster, "node": strconv.FormatUint(n.cfg.ID, 10)}
	d := func(name, help string, vars ...string) *prometheus.Desc {
		return prometheus.NewDesc("raft_"+name, help, vars, l)
	}
	return &collector{
		n:             n,
		leader:        d("leader_id", "Raft ID of the leader this node knows (0: none)."),
		isLeader:      d("is_leader", "1 if this node is the leader."),
		term:          d("term", "Current raft term."),
		commit:        d("commit_index", "Highest log index known committed."),
		applied:       d("applied_index", "Highest log index applied."),
		snapshot:      d("snapshot_index", "Index of the newest snapshot."),
		logBytes:      d("log_bytes", "Bytes of entry data in raft's in-memory log (bounded by about 2 x SnapshotBytes plus the entries not yet applied)."),
		sent:          d("messages_sent_total", "Raft messages written to peers."),
		received:      d("messages_received_total", "Raft messages received from peers."),
		dropped:       d("messages_dropped_total", "Raft messages dropped, by reason (raft retransmits).", "reason"),
		panics:        d("connection_panics_total", "Raft connections closed because serving them panicked (a bug: the log has the stack)."),
		silent:        d("connections_silent_total", "Raft connections to a peer dropped and redialed because the peer said nothing for an election timeout after this node wrote (a silent path)."),
		retired:       d("retired", "1 if the node is retired (dropped from the consenters): it does not campaign."),
		sentBytes:     d("sent_bytes_total", "Bytes of raft messages written to peers, by kind: payload (uncompressed) and wire (as written, S2-compressed where the peer agreed; frame headers in both).", "kind"),
		receivedBytes: d("received_bytes_total", "Bytes of raft messages received from peers, by kind: payload (decompressed) and wire (as read; frame headers in both).", "kind"),
		hbRTT:         d("heartbeat_rtt_seconds", "Round trips of this node's heartbeats while it leads, from queueing a heartbeat to a follower to receiving its answer (issue #15: p99 under 50 ms on loopback under bulk load), by follower (raft ID).", "peer"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.isLeader, c.term, c.commit, c.applied, c.snapshot, c.logBytes, c.sent, c.received, c.dropped, c.panics, c.silent, c.retired, c.hbRTT, c.sentBytes, c.receivedBytes} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.n.Status()
	g := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	g(c.leader, st.Leader)
	isLeader := uint64(0)
	if st.Leader == st.ID {
		isLeader = 1
	}
	g(c.isLeader, isLeader)
	g(c.term, st.Term)
	g(c.commit, st.Commit)
	g(c.applied, st.Applied)
	g(c.snapshot, st.SnapshotIndex)
	g(c.logBytes, st.LogBytes)
	retired := uint64(0)
	if st.Retired {
		retired = 1
	}
	g(c.retired, retired)
	ch <- prometheus.MustNewConstMetric(c.silent, prometheus.CounterValue, float64(st.Transport.Silent))
	ch <- prometheus.MustNewConstMetric(c.sent, prometheus.CounterValue, float64(st.Transport.Sent))
	ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(st.Transport.Received))
	ch <- prometheus.MustNewConstMetric(c.panics, prometheus.CounterValue, float64(st.Transport.Panics))
	for _, b := range []struct {
		d             *prometheus.Desc
		payload, wire uint64
	}{{c.sentBytes, st.Transport.SentPayload, st.Transport.SentWire}, {c.receivedBytes, st.Transport.ReceivedPayload, st.Transport.ReceivedWire}} {
		ch <- prometheus.MustNewConstMetric(b.d, prometheus.CounterValue, float64(b.payload), "payload")
		ch <- prometheus.MustNewConstMetric(b.d, prometheus.CounterValue, float64(b.wire), "wire")
	}
	for id, h := range c.n.tr.hbHists() {
		n, sum, buckets := h.cumulative()
		ch <- prometheus.MustNewConstHistogram(c.hbRTT, n, sum, buckets, strconv.FormatUint(id, 10))
	}
	for _, r := range []string{DropQueueFull, DropUnreachable, DropUnknownPeer, DropBadSender, DropUnknownType, DropStepFailed, DropBadCompressed} {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Transport.Dropped[r]), r)
	}
}

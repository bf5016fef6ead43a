package raftlog

import (
	"bytes"
	"encoding/binary"
	"maps"
	"sync"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Heartbeat round trips (issue #15, consensus first): the leader's
// transport stamps each heartbeat that carries no context of its own (raft
// uses a heartbeat's context only for ReadIndex, which memberd does not
// use) with the time it queued it; a follower's raft echoes a heartbeat's
// context in its answer (etcd raft's handleHeartbeat), whatever its
// version, and the leader strips the stamp before raft sees the answer, so
// raft sees exactly what it sent. The round trip so measured is what
// CheckQuorum and the followers' election timers depend on: the leader's
// queue, its connection, the tunnel and relays both ways, and the
// follower's raft loop (which answers only after persisting what came
// before). Counted in raft_heartbeat_rtt_seconds.

// hbMagic starts a stamp; then this process's instance (8 bytes: an
// answer to an earlier run of this node is stripped but not counted) and
// the nanoseconds since hbEpoch (8 bytes).
var hbMagic = []byte("mdhb")

var (
	hbEpoch    = time.Now()
	hbInstance = uint64(hbEpoch.UnixNano())
)

const hbStampLen = 4 + 8 + 8

// hbStamp is a heartbeat context for a heartbeat queued now.
func hbStamp() []byte {
	b := make([]byte, 0, hbStampLen)
	b = append(b, hbMagic...)
	b = binary.BigEndian.AppendUint64(b, hbInstance)
	return binary.BigEndian.AppendUint64(b, uint64(time.Since(hbEpoch)))
}

// hbAnswer reports whether ctx is a stamp and, when this process set it,
// the round trip since.
func hbAnswer(ctx []byte) (rtt time.Duration, stamp, ours bool) {
	if len(ctx) != hbStampLen || !bytes.HasPrefix(ctx, hbMagic) {
		return 0, false, false
	}
	if binary.BigEndian.Uint64(ctx[4:]) != hbInstance {
		return 0, true, false
	}
	sent := time.Duration(binary.BigEndian.Uint64(ctx[12:]))
	return max(time.Since(hbEpoch)-sent, 0), true, true
}

// hbBuckets are the upper bounds (seconds) of raft_heartbeat_rtt_seconds;
// 0.05 is issue #15's target for the p99 on loopback.
var hbBuckets = []float64{.001, .002, .005, .01, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5}

// rttHist counts heartbeat round trips in hbBuckets (not cumulative).
type rttHist struct {
	mu     sync.Mutex
	counts []uint64 // per bucket, then one past the last bound
	n      uint64
	sum    float64
}

func (h *rttHist) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(hbBuckets) && s > hbBuckets[i] {
		i++
	}
	h.mu.Lock()
	if h.counts == nil {
		h.counts = make([]uint64, len(hbBuckets)+1)
	}
	h.counts[i]++
	h.n++
	h.sum += s
	h.mu.Unlock()
}

// cumulative returns the count, the sum and the cumulative bucket counts
// by upper bound, as Prometheus histograms want them.
func (h *rttHist) cumulative() (uint64, float64, map[float64]uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[float64]uint64, len(hbBuckets))
	var c uint64
	for i, ub := range hbBuckets {
		if h.counts != nil {
			c += h.counts[i]
		}
		out[ub] = c
	}
	return h.n, h.sum, out
}

// stampHeartbeat stamps m when it is a heartbeat without context.
func stampHeartbeat(m *raftpb.Message) {
	if m.Type == raftpb.MsgHeartbeat && len(m.Context) == 0 {
		m.Context = hbStamp()
	}
}

// answeredHeartbeat counts the round trip of a heartbeat answer that
// carries a stamp, and removes the stamp.
func (t *transport) answeredHeartbeat(m *raftpb.Message) {
	if m.Type != raftpb.MsgHeartbeatResp {
		return
	}
	rtt, stamp, ours := hbAnswer(m.Context)
	if !stamp {
		return
	}
	m.Context = nil
	if ours {
		t.hbHist(m.From).observe(rtt)
	}
}

// hbHist is the round-trip histogram of heartbeats to peer id.
func (t *transport) hbHist(id uint64) *rttHist {
	t.hbMu.Lock()
	defer t.hbMu.Unlock()
	if t.hbRTT == nil {
		t.hbRTT = map[uint64]*rttHist{}
	}
	h := t.hbRTT[id]
	if h == nil {
		h = &rttHist{}
		t.hbRTT[id] = h
	}
	return h
}

// hbHists returns the histograms by peer ID.
func (t *transport) hbHists() map[uint64]*rttHist {
	t.hbMu.Lock()
	defer t.hbMu.Unlock()
	return maps.Clone(t.hbRTT)
}

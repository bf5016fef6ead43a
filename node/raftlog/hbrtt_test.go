package raftlog

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// TestHeartbeatRoundTripStamp: a heartbeat without context leaves the
// transport stamped, a heartbeat with one (ReadIndex) untouched; the answer's
// stamp is counted once in the histogram of the peer that answered and
// stripped, so raft sees the context it sent; a stamp from an earlier run
// of this node is stripped but not counted.
func TestHeartbeatRoundTripStamp(t *testing.T) {
	m := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2}
	stampHeartbeat(&m)
	if len(m.Context) != hbStampLen {
		t.Fatalf("stamped context is %d bytes, want %d", len(m.Context), hbStampLen)
	}
	read := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Context: []byte("read-index")}
	stampHeartbeat(&read)
	if string(read.Context) != "read-index" {
		t.Fatalf("a heartbeat's own context became %q", read.Context)
	}
	app := raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2}
	stampHeartbeat(&app)
	if app.Context != nil {
		t.Fatal("an append was stamped")
	}

	tr := &transport{}
	time.Sleep(2 * time.Millisecond)
	resp := raftpb.Message{Type: raftpb.MsgHeartbeatResp, From: 2, To: 1, Context: m.Context}
	tr.answeredHeartbeat(&resp)
	if resp.Context != nil {
		t.Fatalf("the answer still carries %d bytes of context", len(resp.Context))
	}
	n, sum, buckets := tr.hbHists()[2].cumulative()
	if n != 1 || sum < 0.002 || buckets[0.001] != 0 || buckets[5] != 1 {
		t.Fatalf("histogram: n %d, sum %g, buckets %v; want one round trip of at least 2 ms", n, sum, buckets)
	}

	old := append([]byte(nil), m.Context...)
	old[4] ^= 0xff // another instance
	resp = raftpb.Message{Type: raftpb.MsgHeartbeatResp, From: 3, To: 1, Context: old}
	tr.answeredHeartbeat(&resp)
	if resp.Context != nil || tr.hbHists()[3] != nil {
		t.Fatalf("a stamp of an earlier run: context %q, histogram %v", resp.Context, tr.hbHists()[3])
	}
	own := raftpb.Message{Type: raftpb.MsgHeartbeatResp, From: 2, To: 1, Context: []byte("read-index")}
	tr.answeredHeartbeat(&own)
	if string(own.Context) != "read-index" {
		t.Fatalf("a read-index answer's context became %q", own.Context)
	}
}

// TestHeartbeatRoundTripCounted: on a live transport pair, heartbeats the
// leader sends come back answered and counted, and the follower's raft
// (here its step) sees the stamp it must echo.
func TestHeartbeatRoundTripCounted(t *testing.T) {
	lnA, lnB := listenLoopback(t), listenLoopback(t)
	var a *transport
	stepA := func(ctx context.Context, m raftpb.Message) error {
		if len(m.Context) != 0 {
			t.Errorf("raft on the leader saw context %q on %v", m.Context, m.Type)
		}
		return nil
	}
	var b *transport
	stepB := func(ctx context.Context, m raftpb.Message) error {
		if m.Type == raftpb.MsgHeartbeat { // what etcd raft's handleHeartbeat answers
			b.send([]raftpb.Message{{Type: raftpb.MsgHeartbeatResp, From: 2, To: 1, Term: m.Term, Context: m.Context}})
		}
		return nil
	}
	a = laneTransport(t, 1, lnA, map[uint64]string{2: lnB.Addr().String()}, stepA)
	b = laneTransport(t, 2, lnB, map[uint64]string{1: lnA.Addr().String()}, stepB)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		a.send([]raftpb.Message{{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1}})
		if h := a.hbHists()[2]; h != nil {
			if n, _, _ := h.cumulative(); n >= 3 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("heartbeat round trips counted: %v, want >= 3", a.hbHists())
}

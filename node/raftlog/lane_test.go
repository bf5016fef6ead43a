package raftlog

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sync/errgroup"
)

// laneTransport starts a transport for node id of cluster "lanes" on a
// loopback listener, peered with peers (ID -> address), handing received
// messages to step. It stops with the test.
func laneTransport(t *testing.T, id uint64, ln net.Listener, peers map[uint64]string, step func(context.Context, raftpb.Message) error) *transport {
	return laneTransportStall(t, id, ln, peers, step, 0)
}

func laneTransportStall(t *testing.T, id uint64, ln net.Listener, peers map[uint64]string, step func(context.Context, raftpb.Message) error, stallAfter time.Duration) *transport {
	t.Helper()
	return laneTransportWith(t, id, ln, peers, step, func(tr *transport) { tr.stallAfter = stallAfter })
}

// laneTransportWith is laneTransport with tune applied before the start.
func laneTransportWith(t *testing.T, id uint64, ln net.Listener, peers map[uint64]string, step func(context.Context, raftpb.Message) error, tune func(*transport)) *transport {
	t.Helper()
	tr := &transport{id: id, cluster: "lanes", dialer: &net.Dialer{}, ln: ln, queueLen: 64, maxFrame: 4 << 20,
		dialTO: 5 * time.Second, writeTO: 5 * time.Second,
		log:    slog.New(slog.DiscardHandler),
		report: &fakeReporter{snaps: map[uint64]raft.SnapshotStatus{}},
		step:   step}
	tune(tr)
	ctx, stop := context.WithCancel(context.Background())
	var g errgroup.Group
	var ps []Peer
	for pid, addr := range peers {
		ps = append(ps, Peer{ID: pid, Addr: addr})
	}
	tr.start(ctx, &g, ps)
	t.Cleanup(func() {
		stop()
		if err := g.Wait(); err != nil {
			t.Errorf("transport %d: %v", id, err)
		}
	})
	return tr
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestHeartbeatsPassBlockedAppends: consensus first (issue #15). The
// follower is stuck on an append (its step blocks, as a follower busy
// with a huge entry would be) and the leader has more appends queued
// behind it; heartbeats and votes must still arrive, on the priority lane.
// With one connection per peer they waited behind the stuck append.
func TestHeartbeatsPassBlockedAppends(t *testing.T) {
	lnA, lnB := listenLoopback(t), listenLoopback(t)
	release := make(chan struct{})
	defer close(release)
	var apps, beats atomic.Int64
	stepB := func(ctx context.Context, m raftpb.Message) error {
		switch m.Type {
		case raftpb.MsgApp:
			apps.Add(1)
			select { // stuck until the test ends
			case <-release:
			case <-ctx.Done():
			}
		case raftpb.MsgHeartbeat:
			beats.Add(1)
		}
		return nil
	}
	a := laneTransport(t, 1, lnA, map[uint64]string{2: lnB.Addr().String()}, func(context.Context, raftpb.Message) error { return nil })
	laneTransport(t, 2, lnB, map[uint64]string{1: lnA.Addr().String()}, stepB)

	big := make([]byte, 256<<10)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		a.send([]raftpb.Message{
			{Type: raftpb.MsgApp, From: 1, To: 2, Term: 1, Entries: []raftpb.Entry{{Data: big}}},
			{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1},
		})
		if apps.Load() > 0 && beats.Load() >= 5 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if apps.Load() == 0 {
		t.Fatal("no append reached the follower")
	}
	if beats.Load() < 5 {
		t.Fatalf("%d heartbeats reached the follower while an append was stuck, want >= 5", beats.Load())
	}
	a.mu.Lock()
	p := a.peers[2]
	a.mu.Unlock()
	if !p.prioUp.Load() {
		t.Error("the priority lane to node 2 is not up")
	}
}

// TestNoPriorityLaneToOldPeer: a peer that does not speak lanes (an older
// memberd: it takes every new connection from a node as a replacement of
// the previous one) gets one connection, with heartbeats and appends on
// it, never a second one that would knock the first out.
func TestNoPriorityLaneToOldPeer(t *testing.T) {
	lnOld := listenLoopback(t)
	defer lnOld.Close()
	var mu sync.Mutex
	conns := 0
	got := map[raftpb.MessageType]int{}
	go func() { // the old protocol, by hand: hello, then frames
		for {
			c, err := lnOld.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns++
			mu.Unlock()
			go func() {
				defer c.Close()
				fr := frameReader{r: bufio.NewReader(c), max: 4 << 20}
				if typ, _, err := fr.next(); err != nil || typ != frameHello {
					return
				}
				reply := hello{From: 2, To: 1, Cluster: "lanes"}
				if _, err := c.Write(appendFrame(nil, frameHello, reply.marshal())); err != nil {
					return
				}
				for {
					typ, b, err := fr.next()
					if err != nil {
						return
					}
					if typ != frameMsg {
						continue // an old node skips unknown frames, lane included
					}
					var m raftpb.Message
					if m.Unmarshal(b) == nil {
						mu.Lock()
						got[m.Type]++
						mu.Unlock()
					}
				}
			}()
		}
	}()
	lnA := listenLoopback(t)
	a := laneTransport(t, 1, lnA, map[uint64]string{2: lnOld.Addr().String()}, func(context.Context, raftpb.Message) error { return nil })
	for range 50 {
		a.send([]raftpb.Message{
			{Type: raftpb.MsgApp, From: 1, To: 2, Term: 1},
			{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1},
		})
		time.Sleep(20 * time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		done := got[raftpb.MsgApp] == 50 && got[raftpb.MsgHeartbeat] == 50
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if conns != 1 {
		t.Errorf("node 1 opened %d connections to an old peer, want 1", conns)
	}
	if got[raftpb.MsgApp] != 50 || got[raftpb.MsgHeartbeat] != 50 {
		t.Errorf("the old peer received %v, want 50 appends and 50 heartbeats", got)
	}
}

// TestBulkLaneSilentWithoutAppendAnswers: with heartbeats on their own
// lane, their answers say nothing of the bulk connection. A follower that
// answers heartbeats but no appends (its bulk connection stuck) makes the
// leader drop and redial the bulk connection after the stall timeout, as
// any silent connection was before the lanes; one that answers appends
// does not.
func TestBulkLaneSilentWithoutAppendAnswers(t *testing.T) {
	for _, tc := range []struct {
		name        string
		answerApps  bool
		wantStalled bool
	}{
		{"appends unanswered", false, true},
		{"appends answered", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lnA, lnB := listenLoopback(t), listenLoopback(t)
			const stall = 500 * time.Millisecond
			nop := func(context.Context, raftpb.Message) error { return nil }
			a := laneTransportStall(t, 1, lnA, map[uint64]string{2: lnB.Addr().String()}, nop, stall)
			b := laneTransportStall(t, 2, lnB, map[uint64]string{1: lnA.Addr().String()}, nop, stall)
			a.mu.Lock()
			pa := a.peers[2]
			a.mu.Unlock()
			// Until the priority lane is up, the bulk lane is judged by any answer.
			deadline := time.Now().Add(10 * time.Second)
			for !pa.prioUp.Load() {
				if time.Now().After(deadline) {
					t.Fatal("the priority lane to node 2 never came up")
				}
				a.send([]raftpb.Message{{Type: raftpb.MsgHeartbeat, From: 1, To: 2}})
				b.send([]raftpb.Message{{Type: raftpb.MsgHeartbeatResp, From: 2, To: 1}})
				time.Sleep(20 * time.Millisecond)
			}
			end := time.Now().Add(6 * stall)
			for time.Now().Before(end) {
				a.send([]raftpb.Message{{Type: raftpb.MsgApp, From: 1, To: 2}, {Type: raftpb.MsgHeartbeat, From: 1, To: 2}})
				answers := []raftpb.Message{{Type: raftpb.MsgHeartbeatResp, From: 2, To: 1}}
				if tc.answerApps {
					answers = append(answers, raftpb.Message{Type: raftpb.MsgAppResp, From: 2, To: 1})
				}
				b.send(answers)
				time.Sleep(20 * time.Millisecond)
			}
			if got := a.stats().Silent; (got > 0) != tc.wantStalled {
				t.Errorf("bulk connections dropped as silent: %d, want stalled=%v", got, tc.wantStalled)
			}
		})
	}
}

package tunnel_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// raftElectionTimeout is the ledger's: node/raftlog's defaults (tick
// 100ms × 10 ElectionTicks; the leader steps down when it heard from no
// quorum within one such window), which the appliance does not override.
const raftElectionTimeout = time.Second

// heartbeats sends a numbered 64-byte message on w every 10ms (raft's
// heartbeat tick is 100ms: ten times denser) until stop, and records when
// each arrives on r. It checks that they arrive in order, none missing.
type heartbeats struct {
	mu  sync.Mutex
	at  []time.Time
	err error
	wg  sync.WaitGroup
}

func sendHeartbeats(w, r net.Conn, stop <-chan struct{}) *heartbeats {
	h := &heartbeats{}
	h.wg.Add(2)
	go func() {
		defer h.wg.Done()
		defer w.Close()
		var msg [64]byte
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			binary.BigEndian.PutUint64(msg[:], i)
			if _, err := w.Write(msg[:]); err != nil {
				h.fail(fmt.Errorf("write %d: %w", i, err))
				return
			}
		}
	}()
	go func() {
		defer h.wg.Done()
		var msg [64]byte
		for i := uint64(0); ; i++ {
			if _, err := io.ReadFull(r, msg[:]); err != nil {
				if err != io.EOF {
					h.fail(fmt.Errorf("read %d: %w", i, err))
				}
				return
			}
			if got := binary.BigEndian.Uint64(msg[:]); got != i {
				h.fail(fmt.Errorf("message %d arrived as number %d", got, i))
				return
			}
			h.mu.Lock()
			h.at = append(h.at, time.Now())
			h.mu.Unlock()
		}
	}()
	return h
}

func (h *heartbeats) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = err
	}
}

func (h *heartbeats) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.at)
}

// longestGap is the longest time between arrivals in [from, to).
func (h *heartbeats) longestGap(from, to time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	var g time.Duration
	prev := from
	for _, a := range h.at {
		if a.Before(from) {
			prev = a
			continue
		}
		if !a.Before(to) {
			break
		}
		g = max(g, a.Sub(prev))
		prev = a
	}
	return g
}

// A relay killed abruptly (kill -9: its members' QUIC connections go
// silent, with no error) under a TCP connection inside the tunnel: the
// connection survives with every message in order, and its longest
// silence stays well under raft's election timeout. The relay client
// copies packets to the other relay once the dead one has been quiet for
// SuspectAfter, and WireGuard's replay window drops the duplicates when
// both relays carried a packet.
func TestRelayCrashUnderTunnelStream(t *testing.T) {
	devs, relays, clients := relayClusterN(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	x, y := connect(t, ctx, devs["bank-a"], devs["bank-b"], "bank-b", 7051)
	stop := make(chan struct{})
	h := sendHeartbeats(x, y, stop)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		h.wg.Wait()
	}()
	waitUntil(t, 10*time.Second, "heartbeats flowing", func() bool { return h.count() > 100 })
	t0 := crashRelayInUse(t, relays, clients)
	n0 := h.count()
	waitUntil(t, 10*time.Second, "heartbeats after the crash", func() bool { return h.count() > n0+100 })
	t1 := time.Now()
	close(stop)
	h.wg.Wait()
	if h.err != nil {
		t.Fatalf("the tunnel stream broke across the relay crash: %v", h.err)
	}
	before := h.longestGap(t0.Add(-time.Second), t0)
	gap := h.longestGap(t0, t1)
	t.Logf("relay-1 crashed: longest silence of the 10ms heartbeats %v (in the second before: %v); %d messages in order; drops bank-a %v bank-b %v; bank-a relays %+v",
		gap.Round(time.Millisecond), before.Round(time.Millisecond), h.count(), clients["bank-a"].Drops(), clients["bank-b"].Drops(), clients["bank-a"].Status())
	if gap >= raftElectionTimeout/2 {
		t.Errorf("the stream was silent for %v, want well under raft's election timeout %v", gap, raftElectionTimeout)
	}
}

// waitUntil polls cond until it holds or the timeout passes.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(timeout); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// The crashed relay comes back (a restarted process on the same address)
// while a bulk stream (raft's appends) shares the tunnel with the
// heartbeats: members reconnect once they give up on the old connection
// (4×DeadAfter of silence) and move their traffic back to it, the first
// relay of the policy. Moving back must not stall the heartbeats either.
func TestRelayRestartUnderTunnelStream(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for members to give up on the crashed relay (~5s)")
	}
	devs, relays, clients := relayClusterN(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	x, y := connect(t, ctx, devs["bank-a"], devs["bank-b"], "bank-b", 7051)
	bx, by := connect(t, ctx, devs["bank-b"], devs["bank-a"], "bank-a", 7052)
	stop := make(chan struct{})
	h := sendHeartbeats(x, y, stop)
	bulk := make(chan error, 1)
	var bulkBytes int64
	go func() {
		n, err := pacedStream(bx, by, 7, stop, 5*time.Millisecond) // ~3 MB/s
		bulkBytes = n
		bulk <- err
	}()
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			close(stop)
			h.wg.Wait()
		}
	}
	defer halt()
	waitUntil(t, 10*time.Second, "heartbeats flowing", func() bool { return h.count() > 100 })
	relays[0].crash()
	time.Sleep(2 * time.Second)
	relays[0].start(t)
	tUp := time.Now()
	waitUntil(t, 20*time.Second, "both members back on relay-1", func() bool {
		for _, c := range clients {
			if st := c.Status(); !st[0].Active || !st[0].Since.After(tUp) {
				return false
			}
		}
		return true
	})
	moved := time.Since(tUp)
	time.Sleep(2 * time.Second)
	halt()
	if err := <-bulk; err != nil {
		t.Fatalf("the bulk stream broke: %v", err)
	}
	if h.err != nil {
		t.Fatalf("the heartbeat stream broke: %v", h.err)
	}
	gap := h.longestGap(tUp, time.Now())
	t.Logf("relay-1 restarted: members back on it after %v; longest silence of the 10ms heartbeats since the restart %v; bulk %d MB; bank-b drops %v; bank-b relays %+v",
		moved.Round(time.Millisecond), gap.Round(time.Millisecond), bulkBytes>>20, clients["bank-b"].Drops(), clients["bank-b"].Status())
	if gap >= raftElectionTimeout/2 {
		t.Errorf("the heartbeats were silent for %v around the move back, want well under raft's election timeout %v", gap, raftElectionTimeout)
	}
}

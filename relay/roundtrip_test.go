package relay

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoFlow sends a numbered request from a to b every interval; b answers
// each request it receives at once, through its own relay client, as a
// member's netstack answers a ping. Beside it, each side sends a
// background packet to the other every 2 ms (raft and the ledger between
// members), so that the packets a client keeps for resending are mostly
// not the requests. It records which requests reached b and which answers
// came back to a.
type echoFlow struct {
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	mu      sync.Mutex
	sent    map[int]time.Time
	reqs    map[int]bool // requests b received
	replies map[int]bool // answers a received
	bgSent  map[int]time.Time
	bg      map[int]bool // background packets a->b that b received
}

func startEcho(t *testing.T, a, b *Client, aID, bID string, interval time.Duration) *echoFlow {
	f := &echoFlow{stop: make(chan struct{}), sent: map[int]time.Time{}, reqs: map[int]bool{}, replies: map[int]bool{},
		bgSent: map[int]time.Time{}, bg: map[int]bool{}}
	every := func(d time.Duration, do func(i int)) {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); tickUntil(f.stop, d, do) }()
	}
	every(interval, func(i int) {
		f.mu.Lock()
		f.sent[i] = time.Now()
		f.mu.Unlock()
		_ = a.WritePacket([]byte("req-"+strconv.Itoa(i)), bID)
	})
	every(2*time.Millisecond, func(i int) {
		f.mu.Lock()
		f.bgSent[i] = time.Now()
		f.mu.Unlock()
		_ = a.WritePacket([]byte("bg-"+strconv.Itoa(i)), bID)
	})
	every(2*time.Millisecond, func(i int) { _ = b.WritePacket([]byte("bg-"+strconv.Itoa(i)), aID) })
	// One reader per client: b answers requests, a records answers.
	serve := func(c *Client, prefix string, seen map[int]bool, answer func(i int)) {
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadPacket(buf)
			if err != nil {
				return // closed at cleanup
			}
			s, ok := strings.CutPrefix(string(buf[:n]), prefix)
			if !ok {
				if s, ok := strings.CutPrefix(string(buf[:n]), "bg-"); ok && answer != nil {
					if i, err := strconv.Atoi(s); err == nil {
						f.mu.Lock()
						f.bg[i] = true
						f.mu.Unlock()
					}
				}
				continue
			}
			i, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			f.mu.Lock()
			seen[i] = true
			f.mu.Unlock()
			if answer != nil {
				answer(i)
			}
		}
	}
	go serve(b, "req-", f.reqs, func(i int) { _ = b.WritePacket([]byte("rep-"+strconv.Itoa(i)), aID) })
	go serve(a, "rep-", f.replies, nil)
	t.Cleanup(f.halt)
	return f
}

// tickUntil calls do(0), do(1), ... every d until stop is closed.
func tickUntil(stop <-chan struct{}, d time.Duration, do func(i int)) {
	tk := time.NewTicker(d)
	defer tk.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-tk.C:
		}
		do(i)
	}
}

// halt stops the senders and waits for them.
func (f *echoFlow) halt() {
	f.once.Do(func() { close(f.stop); f.wg.Wait() })
}

// lost returns the requests sent in [from, to) that never reached b, and
// those whose answer never reached a.
func (f *echoFlow) lost(from, to time.Time) (reqs, replies []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, at := range f.sent {
		if at.Before(from) || !at.Before(to) {
			continue
		}
		if !f.reqs[i] {
			reqs = append(reqs, i)
		} else if !f.replies[i] {
			replies = append(replies, i)
		}
	}
	slices.Sort(reqs)
	slices.Sort(replies)
	return reqs, replies
}

// lostBackground counts the background packets a->b sent in [from, to)
// that never reached b, and all those sent then.
func (f *echoFlow) lostBackground(from, to time.Time) (lost, sent int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, at := range f.bgSent {
		if at.Before(from) || !at.Before(to) {
			continue
		}
		sent++
		if !f.bg[i] {
			lost++
		}
	}
	return lost, sent
}

func (f *echoFlow) answered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.replies)
}

// A ping through the tunnel is a round trip: the request goes a -> b on
// the relay a sends on, the answer b -> a on the relay b sends on. When
// that relay dies without a word (kill -9 over QUIC), every request and
// every answer sent from the crash until both members have moved to the
// other relay must still arrive (resent or copied there): in demo --ci,
// 7-9 of the ~10 pings sent in the 200 ms before the switch went
// unanswered for a second although both members copied hundreds of
// packets to the backup relay.
func TestRelayCrashLosesNoRoundTrip(t *testing.T) {
	n, r1, a, b := twoRelays(t, false)
	crashUnderEcho(t, n, r1, a, b)
}

// The same with bank-a reaching both relays over TLS/TCP only (UDP
// blocked for it) and bank-b over QUIC. When relay-1 dies, bank-a's
// connection to it closes at once and bank-a resends its last packets
// (up to recentLen) through relay-2 on the TCP stream; relay-2 must not
// pass that burst of small packets to bank-b as DATAGRAMs, of which
// quic-go keeps 128 and discards the rest (the newest: those relay-1
// swallowed).
func TestRelayCrashLosesNoRoundTripFromTCPMember(t *testing.T) {
	var nd net.Dialer
	n, r1, a, b := twoRelaysWith(t, false, func(c *ClientConfig) {
		c.DialStream = func(ctx context.Context, addr string) (net.Conn, error) { return nd.DialContext(ctx, "tcp", addr) }
	})
	for _, s := range a.Status() {
		if s.Path != PathTCP {
			t.Fatalf("bank-a should reach every relay over TCP: %s", fmtStatus(a.Status()))
		}
	}
	for _, s := range b.Status() {
		if s.Path != PathQUIC {
			t.Fatalf("bank-b should reach every relay over QUIC: %s", fmtStatus(b.Status()))
		}
	}
	crashUnderEcho(t, n, r1, a, b)
}

// crashUnderEcho runs a 10 ms echo from a to b (startEcho) with both
// sending on relay-1 and relay-2 healthy, crashes relay-1 and fails the
// test for every request or answer lost across it.
func crashUnderEcho(t *testing.T, n *testNet, r1 *testRelay, a, b *Client) {
	t.Helper()
	f := startEcho(t, a, b, "bank-a", "bank-b", 10*time.Millisecond)
	waitFor(t, 5*time.Second, "answers before the crash", func() bool { return f.answered() > 30 })
	for _, c := range []*Client{a, b} {
		if s := c.Status(); !s[0].Active {
			t.Fatalf("relay-1 should be active before the crash: %s", fmtStatus(s))
		}
	}
	time.Sleep(500 * time.Millisecond) // the clients' kept packets: full
	t0 := time.Now()
	copiesA, copiesB := a.copies.Load(), b.copies.Load()
	r1.Crash()
	n0 := f.answered()
	waitFor(t, 5*time.Second, "answers after the crash", func() bool { return f.answered() > n0+100 })
	t1 := time.Now().Add(-time.Second) // what was sent in the last second may be in flight still
	time.Sleep(time.Second)
	f.halt()
	reqs, replies := f.lost(t0.Add(-50*time.Millisecond), t1)
	bgLost, bgSent := f.lostBackground(t0.Add(-50*time.Millisecond), t1)
	t.Logf("relay-1 crashed: %d requests a->b lost %v, %d answers b->a lost %v, %d of %d background packets a->b lost; copies to relay-2: a %d, b %d; drops a %v, b %v, relay-2 %v",
		len(reqs), reqs, len(replies), replies, bgLost, bgSent, a.copies.Load()-copiesA, b.copies.Load()-copiesB, a.Drops(), b.Drops(), n.relays["relay-2"].srv.Drops())
	if len(reqs)+len(replies) > 0 {
		t.Errorf("%d requests and %d answers lost across the crash of the relay in use; want none", len(reqs), len(replies))
	}
}

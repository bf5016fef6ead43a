package relay

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/relay/wire"
)

// tagged is a frame of n bytes whose first two bytes name its source and
// sequence number.
func tagged(src byte, seq, n int) []byte {
	b := make([]byte, n)
	b[0], b[1] = src, byte(seq)
	return b
}

// A source that starts sending behind a long backlog of another is served
// in the next round, not after the backlog; each source's frames stay in
// order.
func TestFairQueueRoundRobin(t *testing.T) {
	q := newFairQueue(100, make(chan struct{}, 1))
	for i := range 20 {
		if q.push("flood", tagged('F', i, 1200)) != nil {
			t.Fatal("dropped below the limit")
		}
	}
	for i := range 5 {
		if q.push("quiet", tagged('Q', i, 1200)) != nil {
			t.Fatal("dropped below the limit")
		}
	}
	next := map[byte]int{}
	lastQuiet := -1
	for pos := 0; ; pos++ {
		f := q.pop()
		if f == nil {
			break
		}
		if int(f[1]) != next[f[0]] {
			t.Fatalf("source %c: frame %d at position %d, want %d (per-source order)", f[0], f[1], pos, next[f[0]])
		}
		next[f[0]]++
		if f[0] == 'Q' {
			lastQuiet = pos
		}
	}
	if next['F'] != 20 || next['Q'] != 5 || q.len() != 0 {
		t.Fatalf("popped %v, want all 25", next)
	}
	// Quantum 4165 bytes: 3 frames of 1200 per turn (4 every few rounds):
	// F F F Q Q Q F F F Q Q -> the quiet source's last at 10. A FIFO: 24.
	if lastQuiet > 11 {
		t.Fatalf("the quiet source's last frame left at position %d of 25, want <= 11 (round robin)", lastQuiet)
	}
}

// Deficit round robin is fair in bytes: a source of small frames gets as
// many bytes through as one of large frames, not as many frames.
func TestFairQueueBytes(t *testing.T) {
	q := newFairQueue(10_000, make(chan struct{}, 1))
	for i := range 200 {
		q.push("big", tagged('B', i, 1300))
	}
	for i := range 2000 {
		q.push("small", tagged('S', i, 100))
	}
	got := map[byte]int{}
	for range 500 {
		f := q.pop()
		got[f[0]] += len(f)
	}
	if d := got['B'] - got['S']; d > 2*fairQuantum || d < -2*fairQuantum {
		t.Fatalf("bytes served: big %d, small %d; want within 2 quanta (%d)", got['B'], got['S'], 2*fairQuantum)
	}
}

// Full: the source with the most frames queued loses one, its newest or
// the one it is pushing; a quieter source's frame gets in.
func TestFairQueuePushOut(t *testing.T) {
	q := newFairQueue(10, make(chan struct{}, 1))
	for i := range 10 {
		q.push("flood", tagged('F', i, 100))
	}
	if out := q.push("flood", tagged('F', 10, 100)); len(out) != 1 || out[0][1] != 10 {
		t.Fatalf("full, the flood's own frame: dropped %v, want the new one", out)
	}
	out := q.push("quiet", tagged('Q', 0, 100))
	if len(out) != 1 || out[0][0] != 'F' || out[0][1] != 9 {
		t.Fatalf("full, a quiet source's frame: pushed out %v, want the flood's newest (9)", out)
	}
	for i := 1; i < 5; i++ {
		q.push("quiet", tagged('Q', i, 100))
	}
	// 5 and 5: a tie goes against the pusher.
	if out := q.push("quiet", tagged('Q', 5, 100)); len(out) != 1 || out[0][0] != 'Q' || out[0][1] != 5 {
		t.Fatalf("tie: dropped %v, want the pusher's own", out)
	}
	if q.len() != 10 {
		t.Fatalf("%d frames queued, limit 10", q.len())
	}
	var order []string
	for f := q.pop(); f != nil; f = q.pop() {
		order = append(order, fmt.Sprintf("%c%d", f[0], f[1]))
	}
	if got := fmt.Sprint(order); got != "[F0 F1 F2 F3 F4 Q0 Q1 Q2 Q3 Q4]" {
		t.Fatalf("popped %s", got)
	}
}

// Bounded in bytes as well as frames: full-size frames (MaxPacketSizeTCP)
// fill a queue at limit × boundFrame bytes, not limit frames; a quieter
// source's frame still gets in, pushing out as many of the flood's newest
// as it needs; and the queue never holds more than its bytes.
func TestFairQueueByteBound(t *testing.T) {
	const limit = 64
	q := newFairQueue(limit, make(chan struct{}, 1))
	big := MaxPacketSizeTCP + wire.ForwardOverhead
	in := 0
	for i := range limit {
		if q.push("flood", tagged('F', i, big)) == nil {
			in++
		}
	}
	if want := limit * boundFrame / big; in != want || q.bytes > limit*boundFrame {
		t.Fatalf("%d frames of %d bytes queued (%d bytes), want %d (at most %d bytes)", in, big, q.bytes, want, limit*boundFrame)
	}
	out := q.push("quiet", tagged('Q', 0, big))
	if len(out) == 0 {
		t.Fatal("a quiet source's frame was dropped by a flood")
	}
	for _, f := range out {
		if f[0] != 'F' {
			t.Fatalf("pushed out a frame of %c, want only the flood's", f[0])
		}
	}
	if q.bytes > limit*boundFrame {
		t.Fatalf("%d bytes queued, bound %d", q.bytes, limit*boundFrame)
	}
	n, bytes := 0, 0
	for f := q.pop(); f != nil; f = q.pop() {
		n, bytes = n+1, bytes+len(f)
	}
	if n != in-len(out)+1 || q.len() != 0 || q.bytes != 0 || bytes > limit*boundFrame {
		t.Fatalf("popped %d frames (%d bytes), want %d; left %d frames, %d bytes", n, bytes, in-len(out)+1, q.len(), q.bytes)
	}
	// One frame larger than the whole bound still goes through an empty
	// queue (the bound is on what waits, not on a packet's size).
	if out := newFairQueue(1, make(chan struct{}, 1)).push("x", make([]byte, 2*boundFrame)); out != nil {
		t.Fatal("a large frame was dropped from an empty queue")
	}
}

// A full queue where no source has two frames drops the new frame: the
// push-out must not leave an emptied source in the round robin (popping
// from it ran the frame count below zero).
func TestFairQueueFullOfSingles(t *testing.T) {
	q := newFairQueue(2, make(chan struct{}, 1))
	q.push("a", tagged('A', 0, 100))
	q.push("b", tagged('B', 0, 100))
	if out := q.push("c", tagged('C', 0, 100)); len(out) != 1 || out[0][0] != 'C' {
		t.Fatalf("dropped %v, want the new frame", out)
	}
	var got []string
	for f := q.pop(); f != nil; f = q.pop() {
		got = append(got, fmt.Sprintf("%c%d", f[0], f[1]))
	}
	if fmt.Sprint(got) != "[A0 B0]" || q.len() != 0 {
		t.Fatalf("popped %v, %d left; want [A0 B0], 0", got, q.len())
	}
	q.push("d", tagged('D', 0, 100))
	if f := q.pop(); f == nil || f[0] != 'D' || q.len() != 0 {
		t.Fatalf("after: popped %v, %d left", f, q.len())
	}
}

// Through a link's writer: a quiet member's packets to a destination
// overtake the backlog another member queued to it, small frames still
// before large ones, control first.
func TestLinkFairBetweenSources(t *testing.T) {
	rs := &recordingStream{wrote: make(chan struct{}, 100)}
	var drops []string
	l := newLink(PathTCP, nil, rs, tls.ConnectionState{}, func(quic.ApplicationErrorCode, string) {}, 64,
		func(r string) { drops = append(drops, r) })
	pkt := func(src string, seq, n int) []byte {
		return wire.AppendPacket(newFrame(wire.PacketOverhead+n), src, tagged(src[0], seq, n))
	}
	for i := range 64 {
		l.sendFrom("flood", pkt("flood", i, 1200), false)
	}
	if l.sendFrom("flood", pkt("flood", 64, 1200), false) {
		t.Fatal("the flood's 65th frame was queued over queue_len 64")
	}
	for i := range 3 {
		if !l.sendFrom("quiet", pkt("quiet", i, 1200), false) {
			t.Fatalf("the quiet member's frame %d was refused", i)
		}
	}
	l.sendFrom("quiet", pkt("quiet", 3, 40), false) // small: urgent
	done := make(chan error, 1)
	go func() { done <- l.writeLoop() }()
	var got []byte
	for len(got) < 64*(1200+3+1+5)+40 && len(drops) < 100 {
		select {
		case <-rs.wrote:
		case <-time.After(5 * time.Second):
			t.Fatal("no write")
		}
		rs.mu.Lock()
		got = bytes.Join(rs.writes, nil)
		rs.mu.Unlock()
	}
	l.close(codeShutdown, "test")
	<-done
	r := wire.NewReader(bytes.NewReader(got), 0)
	var order []string
	for {
		f, err := r.Next()
		if err != nil {
			break
		}
		src, p, err := wire.ParsePacket(f.Body)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, fmt.Sprintf("%s%d", src[:1], p[1]))
	}
	// quiet's small frame first (urgent), then flood 0-2 (its turn: 3
	// frames of 1209 bytes), quiet 0-2, then the rest of the flood but
	// the 3 frames pushed out for quiet's.
	want := []string{"q3", "f0", "f1", "f2", "q0", "q1", "q2"}
	for i := 3; i < 61; i++ {
		want = append(want, fmt.Sprintf("f%d", i))
	}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("sent in order\n%v\nwant\n%v", order, want)
	}
	if len(drops) != 4 {
		t.Fatalf("drops %v, want 4 queue_full (the flood's 65th, and 3 pushed out)", drops)
	}
}

// Through a relay: a destination that stopped reading has its queue full
// of one member's packets, and that member keeps sending; another
// member's packets to it still get through (the flood's newest are
// pushed out for them), none dropped. Before, they were dropped as
// queue_full behind the flood unless a slot happened to be free.
func TestServerQueuesPerSource(t *testing.T) {
	n := newTestNet(t, []string{"flood", "quiet", "dst"}, []string{"relay-1"})
	n.noQUIC = map[string]bool{"relay-1": true}
	r := n.startRelay("relay-1", func(c *ServerConfig) { c.QueueLen = 64; c.RateBytesPerSec = -1 })
	dst := dialSilentMember(t, r.info.Addr, n.cas["dst"].Issue(t, "d").TLS()) // does not read for now
	flood := dialSilentMember(t, r.info.Addr, n.cas["flood"].Issue(t, "f").TLS())
	quiet := dialSilentMember(t, r.info.Addr, n.cas["quiet"].Issue(t, "q").TLS())
	waitFor(t, 5*time.Second, "dst registered", func() bool { return contains(r.srv.Members(), "dst") })
	r.srv.mu.RLock()
	ms := r.srv.members["dst"]
	r.srv.mu.RUnlock()
	ms.mu.Lock()
	dl := ms.conns[0].link
	ms.mu.Unlock()
	// Flood until the destination's queue is full (its socket buffers
	// first) and the relay drops the flood's own packets.
	stopFlood := make(chan struct{})
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		batch := bytes.Repeat(wire.AppendPacket(nil, "dst", make([]byte, 1200)), 16)
		for {
			select {
			case <-stopFlood:
				return
			default:
			}
			_ = flood.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := flood.Write(batch); err != nil {
				return
			}
		}
	}()
	waitFor(t, 20*time.Second, "dst's queue full of the flood", func() bool {
		return dl.data.len() == 64 && r.srv.Drops()[DropQueueFull] > 1000
	})
	for i := range 3 {
		if _, err := quiet.Write(wire.AppendPacket(nil, "dst", tagged('q', i, 1200))); err != nil {
			t.Fatal(err)
		}
	}
	pingPong(t, quiet) // the relay has handled quiet's packets
	close(stopFlood)
	<-floodDone
	if got := dl.data.len(); got > 64 {
		t.Fatalf("%d frames queued, queue_len 64", got)
	}
	_ = dst.SetReadDeadline(time.Now().Add(20 * time.Second))
	rd := wire.NewReader(dst, 0)
	var got []int
	for len(got) < 3 {
		f, err := rd.Next()
		if err != nil {
			t.Fatalf("dst received quiet's packets %v of [0 1 2] before: %v", got, err)
		}
		if f.Type != wire.TypePacket {
			continue
		}
		if src, p, err := wire.ParsePacket(f.Body); err == nil && string(src) == "quiet" {
			got = append(got, int(p[1]))
		}
	}
	if fmt.Sprint(got) != "[0 1 2]" {
		t.Fatalf("dst received quiet's packets as %v", got)
	}
}

// The ring keeps FIFO order across wrap-around and growth, and popBack
// takes the newest.
func TestRing(t *testing.T) {
	var r ring[int]
	next, want := 0, 0
	for round := range 50 {
		for range round % 7 {
			r.pushBack(next)
			next++
		}
		for range round % 5 {
			if r.len() == 0 {
				break
			}
			if v := r.popFront(); v != want {
				t.Fatalf("round %d: popFront %d, want %d", round, v, want)
			}
			want++
		}
	}
	if r.len() == 0 {
		t.Fatal("test drained the ring: no popBack check")
	}
	if v := r.popBack(); v != next-1 {
		t.Fatalf("popBack %d, want the newest %d", v, next-1)
	}
	for r.len() > 0 {
		if v := r.popFront(); v != want {
			t.Fatalf("popFront %d, want %d", v, want)
		}
		want++
	}
	if want != next-1 {
		t.Fatalf("drained up to %d, want %d", want, next-1)
	}
}

// A push that in the end refuses the new frame must not have pushed out
// other sources' frames for it first: they were lost for nothing (found by
// review of f2d7279). Here the quiet source's second 16 KB frame cannot fit
// even with the flood down to its last frame, so only it is dropped and
// the queue is left as it was.
func TestPushOutNeverRefusesAfterDropping(t *testing.T) {
	q := newFairQueue(8, make(chan struct{}, 1)) // maxBytes 8 × 4165 = 33320
	q.push("quiet", tagged('Q', 0, 16000))
	for i := range 3 {
		q.push("flood", tagged('F', i, 5000))
	}
	before, beforeBytes := q.len(), q.bytes
	out := q.push("quiet", tagged('Q', 1, 16000))
	if len(out) != 1 || out[0][0] != 'Q' || out[0][1] != 1 {
		var got []string
		for _, f := range out {
			got = append(got, fmt.Sprintf("%c%d", f[0], f[1]))
		}
		t.Fatalf("dropped %v, want only the new frame Q1", got)
	}
	if q.len() != before || q.bytes != beforeBytes {
		t.Fatalf("queue %d frames %d bytes -> %d frames %d bytes, want unchanged", before, beforeBytes, q.len(), q.bytes)
	}
	// A frame that does fit once the flood's newest are pushed out still
	// pushes them out.
	out = q.push("quiet", tagged('Q', 2, 9000))
	if len(out) != 2 || out[0][0] != 'F' || out[1][0] != 'F' {
		t.Fatalf("pushed out %d frames, want the flood's two newest", len(out))
	}
	if q.bytes > q.maxBytes {
		t.Fatalf("%d bytes queued, bound %d", q.bytes, q.maxBytes)
	}
}

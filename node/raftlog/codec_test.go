package raftlog

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"go.etcd.io/raft/v3/raftpb"
)

// bigApp is an append of about 64 KB that compresses well, as a block of
// envelopes whose creator certificates repeat does.
func bigApp(from, to, index uint64) raftpb.Message {
	var d bytes.Buffer
	for i := 0; d.Len() < 64<<10; i++ {
		fmt.Fprintf(&d, "envelope %d of entry %d; creator: -----BEGIN CERTIFICATE----- MIIB8TCCAZegAwIBAgIUQ... -----END CERTIFICATE-----\n", i, index)
	}
	return raftpb.Message{Type: raftpb.MsgApp, From: from, To: to, Term: 1, Index: index,
		Entries: []raftpb.Entry{{Index: index + 1, Term: 1, Data: d.Bytes()}}}
}

// recorder keeps the messages a transport steps.
type recorder struct {
	mu  sync.Mutex
	got []raftpb.Message
}

func (r *recorder) step(_ context.Context, m raftpb.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, m)
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// compressedPair starts node 1 (the sender, compress as given) and node 2
// (compress as given) and returns them with node 2's recorder.
func compressedPair(t *testing.T, compress1, compress2 bool) (*transport, *transport, *recorder) {
	lnA, lnB := listenLoopback(t), listenLoopback(t)
	rec := &recorder{}
	b := laneTransportWith(t, 2, lnB, map[uint64]string{1: lnA.Addr().String()}, rec.step, func(tr *transport) { tr.compress = compress2 })
	a := laneTransportWith(t, 1, lnA, map[uint64]string{2: lnB.Addr().String()}, func(context.Context, raftpb.Message) error { return nil },
		func(tr *transport) { tr.compress = compress1 })
	return a, b, rec
}

// TestCompressedAppends: two nodes that both compress agree on S2 per
// connection; appends then travel compressed and arrive intact, while
// heartbeats (small) travel plain, and the byte counters say so.
func TestCompressedAppends(t *testing.T) {
	a, b, rec := compressedPair(t, true, true)
	for i := range 20 {
		a.send([]raftpb.Message{{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1, Commit: uint64(i)}})
	}
	waitFor(t, "20 heartbeats", func() bool { return rec.count() == 20 })
	if st := a.stats(); st.SentWire != st.SentPayload || st.SentPayload == 0 {
		t.Fatalf("heartbeats: %d payload bytes, %d on the wire: want them equal (small messages travel plain)", st.SentPayload, st.SentWire)
	}
	// The codec answer may come after the first appends: send until they
	// travel compressed.
	var sent []raftpb.Message
	waitFor(t, "a compressed append", func() bool {
		m := bigApp(1, 2, uint64(len(sent)))
		sent = append(sent, m)
		a.send([]raftpb.Message{m})
		time.Sleep(5 * time.Millisecond)
		st := a.stats()
		return st.SentWire < st.SentPayload
	})
	for range 10 {
		m := bigApp(1, 2, uint64(len(sent)))
		sent = append(sent, m)
		a.send([]raftpb.Message{m})
	}
	waitFor(t, "every append", func() bool { return rec.count() == 20+len(sent) })
	rec.mu.Lock()
	got := rec.got[20:]
	for i, m := range sent {
		if got[i].Index != m.Index || len(got[i].Entries) != 1 || !bytes.Equal(got[i].Entries[0].Data, m.Entries[0].Data) {
			t.Fatalf("append %d arrived as index %d with %d entries, differing from what was sent", i, got[i].Index, len(got[i].Entries))
		}
	}
	rec.mu.Unlock()
	sa, sb := a.stats(), b.stats()
	t.Logf("sent %d payload bytes in %d wire bytes (%.1fx)", sa.SentPayload, sa.SentWire, float64(sa.SentPayload)/float64(sa.SentWire))
	if sa.SentWire*4 > sa.SentPayload {
		t.Errorf("sent %d payload bytes in %d on the wire: want at most a quarter", sa.SentPayload, sa.SentWire)
	}
	if sb.ReceivedPayload != sa.SentPayload || sb.ReceivedWire != sa.SentWire {
		t.Errorf("received %d/%d payload/wire bytes, sent %d/%d", sb.ReceivedPayload, sb.ReceivedWire, sa.SentPayload, sa.SentWire)
	}
	if d := sb.Dropped[DropBadCompressed] + sb.Dropped[DropUnknownType]; d != 0 {
		t.Errorf("receiver dropped %v", sb.Dropped)
	}
}

// TestCompressionDeclined: a listener that does not compress (here
// switched off) answers "none", and everything travels plain.
func TestCompressionDeclined(t *testing.T) {
	a, b, rec := compressedPair(t, true, false)
	for i := range 30 {
		a.send([]raftpb.Message{bigApp(1, 2, uint64(i))})
		time.Sleep(5 * time.Millisecond)
	}
	waitFor(t, "30 appends", func() bool { return rec.count() == 30 })
	if st := a.stats(); st.SentWire != st.SentPayload {
		t.Errorf("sent %d payload bytes as %d on the wire to a listener that declined compression", st.SentPayload, st.SentWire)
	}
	if d := b.stats().Dropped; d[DropBadCompressed]+d[DropUnknownType] != 0 {
		t.Errorf("receiver dropped %v", d)
	}
}

// TestNoCompressionToOldListener: a listener of an older memberd (by
// hand: it skips unknown frames, the codecs frame included, and never
// writes after its hello) receives every append plain, as msg frames.
func TestNoCompressionToOldListener(t *testing.T) {
	lnOld := listenLoopback(t)
	defer lnOld.Close()
	var mu sync.Mutex
	types := map[byte]int{}
	apps := 0
	go func() {
		for {
			c, err := lnOld.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fr := frameReader{r: bufio.NewReader(c), max: 4 << 20}
				if typ, _, err := fr.next(); err != nil || typ != frameHello {
					return
				}
				if _, err := c.Write(appendFrame(nil, frameHello, hello{From: 2, To: 1, Cluster: "lanes"}.marshal())); err != nil {
					return
				}
				for {
					typ, b, err := fr.next()
					if err != nil {
						return
					}
					var m raftpb.Message
					mu.Lock()
					types[typ]++
					if typ == frameMsg && m.Unmarshal(b) == nil && m.Type == raftpb.MsgApp {
						apps++
					}
					mu.Unlock()
				}
			}()
		}
	}()
	lnA := listenLoopback(t)
	a := laneTransportWith(t, 1, lnA, map[uint64]string{2: lnOld.Addr().String()}, func(context.Context, raftpb.Message) error { return nil },
		func(tr *transport) { tr.compress = true })
	for i := range 30 {
		a.send([]raftpb.Message{bigApp(1, 2, uint64(i))})
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, "30 appends at the old listener", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return apps == 30
	})
	mu.Lock()
	defer mu.Unlock()
	if types[frameZMsg] != 0 {
		t.Errorf("an old listener got %d compressed frames", types[frameZMsg])
	}
	if types[frameCodecs] != 1 {
		t.Errorf("codecs frames offered: %d, want 1 (one connection)", types[frameCodecs])
	}
	if st := a.stats(); st.SentWire != st.SentPayload {
		t.Errorf("sent %d payload bytes as %d on the wire to an old listener", st.SentPayload, st.SentWire)
	}
}

// dialRaw performs the dialer's side of the handshake by hand with node
// 2's transport at addr, as node 1, and sends the lane frame.
func dialRaw(t *testing.T, addr string) (net.Conn, *frameReader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(appendFrame(nil, frameHello, hello{From: 1, To: 2, Cluster: "lanes"}.marshal())); err != nil {
		t.Fatal(err)
	}
	fr := &frameReader{r: c, max: 4096}
	if typ, _, err := fr.next(); err != nil || typ != frameHello {
		t.Fatalf("handshake: frame %d, %v", typ, err)
	}
	if _, err := c.Write(appendFrame(nil, frameLane, []byte{laneBulk})); err != nil {
		t.Fatal(err)
	}
	return c, fr
}

// TestOldDialerToNewListener: a dialer of an older memberd (by hand: no
// codecs frame) gets nothing written back after the hello, and its plain
// messages are taken.
func TestOldDialerToNewListener(t *testing.T) {
	lnB := listenLoopback(t)
	rec := &recorder{}
	laneTransportWith(t, 2, lnB, map[uint64]string{1: "127.0.0.1:1"}, rec.step, func(tr *transport) { tr.compress = true })
	c, fr := dialRaw(t, lnB.Addr().String())
	for i := range 5 {
		m := bigApp(1, 2, uint64(i))
		mb := mustMarshal(t, m)
		if _, err := c.Write(appendFrame(nil, frameMsg, mb)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "5 appends", func() bool { return rec.count() == 5 })
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if typ, _, err := fr.next(); err == nil {
		t.Errorf("the listener wrote a frame of type %d to a dialer that offered no codec", typ)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("reading from the listener: %v, want a timeout (nothing written)", err)
	}
}

// TestBadCompressedFramesRefused: a compressed frame that is corrupt,
// claims to decompress past the frame limit (a decompression bomb), names
// a codec not agreed, or comes on a connection that agreed to none is
// refused: counted, the connection closed, the node unharmed and still
// taking good frames.
func TestBadCompressedFramesRefused(t *testing.T) {
	lnB := listenLoopback(t)
	rec := &recorder{}
	b := laneTransportWith(t, 2, lnB, map[uint64]string{1: "127.0.0.1:1"}, rec.step, func(tr *transport) { tr.compress = true })
	mb := mustMarshal(t, bigApp(1, 2, 7))
	good := append([]byte{codecS2}, s2.Encode(nil, mb)...)
	corrupt := bytes.Clone(good)
	for i := len(corrupt) / 2; i < len(corrupt); i += 7 {
		corrupt[i] ^= 0x5a
	}
	// A bomb: the header of an S2 block that claims 1 GiB (the limit is
	// 4 MiB); the decoder must refuse it before allocating.
	bomb := append([]byte{codecS2}, binary.AppendUvarint(nil, 1<<30)...)
	bomb = append(bomb, s2.Encode(nil, make([]byte, 64<<10))[3:]...)
	for _, tc := range []struct {
		name      string
		negotiate bool
		payload   []byte
	}{
		{"corrupt", true, corrupt},
		{"truncated", true, good[:len(good)/2]},
		{"bomb", true, bomb},
		{"unknown codec", true, append([]byte{9}, good[1:]...)},
		{"empty", true, nil},
		{"not negotiated", false, good},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.stats()
			c, fr := dialRaw(t, lnB.Addr().String())
			if tc.negotiate {
				if _, err := c.Write(appendFrame(nil, frameCodecs, []byte{codecS2})); err != nil {
					t.Fatal(err)
				}
				if typ, ans, err := fr.next(); err != nil || typ != frameCodecs || !bytes.Equal(ans, []byte{codecS2}) {
					t.Fatalf("codec answer: frame %d %x, %v", typ, ans, err)
				}
			}
			if _, err := c.Write(appendFrame(nil, frameZMsg, tc.payload)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := fr.next(); err == nil {
				t.Fatal("the listener wrote again instead of closing the connection")
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the connection stayed open after a bad compressed frame")
			}
			after := b.stats()
			if got := after.Dropped[DropBadCompressed] - before.Dropped[DropBadCompressed]; got != 1 {
				t.Errorf("bad compressed frames counted: %d, want 1", got)
			}
			if after.Panics != 0 || after.Received != before.Received {
				t.Errorf("panics %d, received %d -> %d", after.Panics, before.Received, after.Received)
			}
		})
	}
	// Still serving: a good compressed frame on a new connection.
	c, fr := dialRaw(t, lnB.Addr().String())
	c.Write(appendFrame(nil, frameCodecs, []byte{codecS2}))
	if typ, _, err := fr.next(); err != nil || typ != frameCodecs {
		t.Fatalf("codec answer: %d %v", typ, err)
	}
	n := rec.count()
	c.Write(appendFrame(nil, frameZMsg, good))
	waitFor(t, "the good compressed append", func() bool { return rec.count() == n+1 })
	rec.mu.Lock()
	if m := rec.got[n]; m.Index != 7 || !bytes.Equal(mustMarshal(t, m), mb) {
		t.Errorf("the good append arrived changed")
	}
	rec.mu.Unlock()
}

func mustMarshal(t *testing.T, m raftpb.Message) []byte {
	t.Helper()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecompressBombBounded: a block claiming 1 GiB is refused with
// ErrTooLarge without allocating it.
func TestDecompressBombBounded(t *testing.T) {
	bomb := append([]byte{codecS2}, binary.AppendUvarint(nil, 1<<30)...)
	bomb = append(bomb, make([]byte, 100)...)
	d := decompressor{codec: codecS2, max: 4 << 20}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	_, err := d.decode(bomb)
	runtime.ReadMemStats(&ms1)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge", err)
	}
	if got := ms1.TotalAlloc - ms0.TotalAlloc; got > 1<<20 {
		t.Errorf("refusing the bomb allocated %d bytes", got)
	}
}

// FuzzDecompress: whatever a peer sends as a zmsg payload, decode returns
// an error or a message no larger than the limit, and never panics.
func FuzzDecompress(f *testing.F) {
	m := bigApp(1, 2, 3)
	mb, _ := m.Marshal()
	f.Add(append([]byte{codecS2}, s2.Encode(nil, mb)...))
	f.Add([]byte{codecS2, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		d := decompressor{codec: codecS2, max: 1 << 20}
		out, err := d.decode(p)
		if err == nil && len(out) > d.max {
			t.Fatalf("decoded %d bytes, limit %d", len(out), d.max)
		}
	})
}

// TestAppendCompressed: small or incompressible messages are left plain.
func TestAppendCompressed(t *testing.T) {
	if _, ok := appendCompressed(nil, codecS2, make([]byte, compressMin-1)); ok {
		t.Error("a message under compressMin was compressed")
	}
	noise := make([]byte, 8<<10)
	for i := range noise {
		noise[i] = byte(i*2654435761>>13) ^ byte(i>>3*40503)
	}
	if z, ok := appendCompressed(nil, codecS2, s2.Encode(nil, noise)); ok && len(z) > len(noise) {
		t.Error("an incompressible message grew")
	}
	if _, ok := appendCompressed(nil, codecNone, make([]byte, 8<<10)); ok {
		t.Error("compressed without an agreed codec")
	}
	mb := mustMarshal(t, bigApp(1, 2, 1))
	z, ok := appendCompressed([]byte("prefix"), codecS2, mb)
	if !ok {
		t.Fatal("a compressible append was not compressed")
	}
	fr := frameReader{r: bytes.NewReader(z[len("prefix"):]), max: 1 << 20}
	typ, p, err := fr.next()
	if err != nil || typ != frameZMsg {
		t.Fatalf("frame %d, %v", typ, err)
	}
	d := decompressor{codec: codecS2, max: 1 << 20}
	if out, err := d.decode(p); err != nil || !bytes.Equal(out, mb) {
		t.Fatalf("round trip: %v", err)
	}
}

// TestClusterMixedCompression: a cluster where node 3 neither offers nor
// accepts compression (as a member with MEMBERD_DIAG_NO_RAFT_COMPRESSION,
// and on the wire as an older one towards the others) orders the same
// entries everywhere; the other two compress between themselves and talk
// plain with node 3, with nothing dropped.
func TestClusterMixedCompression(t *testing.T) {
	c := newClusterWith(t, 3, func(cfg *Config) { cfg.MaxEntryBytes = 1 << 20 }, func(id uint64, n *Node) { n.tr.compress = id != 3 })
	lead := c.leader(10 * time.Second)
	n := c.nodes[lead].node()
	const entries = 40
	for i := range entries {
		m := bigApp(1, 2, uint64(i))
		if _, err := n.ProposeWait(context.Background(), m.Entries[0].Data); err != nil {
			t.Fatalf("proposal %d: %v", i, err)
		}
	}
	c.waitApplied(entries, 30*time.Second)
	c.checkIdentical()
	for id, tn := range c.nodes {
		st := tn.node().Status().Transport
		t.Logf("node %d: sent %d/%d, received %d/%d payload/wire bytes, dropped %v", id, st.SentPayload, st.SentWire, st.ReceivedPayload, st.ReceivedWire, st.Dropped)
		if st.Dropped[DropBadCompressed] != 0 || st.Dropped[DropUnknownType] != 0 {
			t.Errorf("node %d dropped %v", id, st.Dropped)
		}
		if id == 3 && st.ReceivedWire != st.ReceivedPayload {
			t.Errorf("node 3, which accepts no compression, received %d payload bytes as %d on the wire", st.ReceivedPayload, st.ReceivedWire)
		}
	}
	follower := uint64(1)
	if lead == 1 {
		follower = 2
	}
	if lead != 3 {
		if st := c.nodes[follower].node().Status().Transport; st.ReceivedWire*4 > st.ReceivedPayload {
			t.Errorf("node %d received %d payload bytes from leader %d as %d on the wire: want compressed", follower, st.ReceivedPayload, lead, st.ReceivedWire)
		}
	}
}

// TestCompressGate: after incompressible messages the sender stops trying
// for a while, but compressible ones are compressed again within maxSkip
// messages, every frame sent decodes to exactly the message given (never
// another one's bytes), and small messages do not use up the skips.
func TestCompressGate(t *testing.T) {
	noise := func(i int) []byte {
		b := make([]byte, 4<<10)
		var seed [32]byte
		seed[0], seed[1] = byte(i), byte(i>>8)
		rand.NewChaCha8(seed).Read(b)
		return b
	}
	var g compressGate
	d := decompressor{codec: codecS2, max: 1 << 20}
	// send returns whether raw was compressed (checking the frame), and
	// whether an attempt was made.
	send := func(raw []byte) (compressed, tried bool) {
		t.Helper()
		tried = g.left == 0 && len(raw) >= compressMin
		z, ok := g.append([]byte("prefix"), codecS2, raw)
		if !ok {
			if string(z) != "prefix" {
				t.Fatalf("dst changed for a message sent plain: %q", z)
			}
			return false, tried
		}
		fr := frameReader{r: bytes.NewReader(z[len("prefix"):]), max: 1 << 20}
		typ, p, err := fr.next()
		if err != nil || typ != frameZMsg {
			t.Fatalf("frame %d, %v", typ, err)
		}
		out, err := d.decode(p)
		if err != nil || !bytes.Equal(out, raw) {
			t.Fatalf("a compressed frame decodes to %d other bytes (%v), want the %d given", len(out), err, len(raw))
		}
		return true, tried
	}
	if c, _ := send(mustMarshal(t, bigApp(1, 2, 1))); !c {
		t.Fatal("a compressible append was not compressed")
	}
	const n = 1000
	tries := 0
	for i := range n {
		c, tried := send(noise(i))
		if c {
			t.Fatal("an incompressible message was compressed")
		}
		if tried {
			tries++
		}
	}
	// 1, 2, 4, 8, 16 then every maxSkip+1: about n/(maxSkip+1) + 6.
	if limit := n/(maxSkip+1) + 7; tries > limit {
		t.Errorf("%d attempts on %d incompressible messages, want at most %d", tries, n, limit)
	}
	if tries < n/(maxSkip+1) {
		t.Errorf("%d attempts on %d incompressible messages: the gate never tries again", tries, n)
	}
	// Small messages pass plain without counting against the skips.
	left := g.left
	for range 3 * maxSkip {
		if c, _ := send(make([]byte, compressMin-1)); c {
			t.Fatal("a message under compressMin was compressed")
		}
	}
	if g.left != left {
		t.Errorf("small messages changed the skips left from %d to %d", left, g.left)
	}
	// Compressible data again: compressed within maxSkip+1 messages, then
	// every time.
	first := -1
	for i := range 3 * maxSkip {
		c, _ := send(mustMarshal(t, bigApp(1, 2, uint64(i+2))))
		if c && first < 0 {
			first = i
		}
		if !c && first >= 0 {
			t.Fatalf("message %d after a compressed one went plain", i)
		}
	}
	if first < 0 || first > maxSkip {
		t.Fatalf("compressible messages compressed again from the %dth on, want at most %d", first, maxSkip)
	}
	// No codec agreed: never compressed, and the gate is not touched.
	var g2 compressGate
	if _, ok := g2.append(nil, codecNone, mustMarshal(t, bigApp(1, 2, 1))); ok || g2 != (compressGate{}) {
		t.Errorf("codec none: compressed %v, gate %+v", ok, g2)
	}
}

// BenchmarkCompressIncompressible: a pump's cost per 64 KB append of
// random bytes (already compressed or encrypted payloads), trying every
// message (always) against compressGate (gate).
func BenchmarkCompressIncompressible(b *testing.B) {
	raw := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{1}).Read(raw)
	var dst []byte
	b.Run("always", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		for range b.N {
			dst, _ = appendCompressed(dst[:0], codecS2, raw)
		}
	})
	b.Run("gate", func(b *testing.B) {
		var g compressGate
		b.SetBytes(int64(len(raw)))
		for range b.N {
			dst, _ = g.append(dst[:0], codecS2, raw)
		}
	})
}

package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay/wire"
)

// recordingStream records each Write call.
type recordingStream struct {
	mu     sync.Mutex
	writes [][]byte
	wrote  chan struct{}
}

func (s *recordingStream) Read([]byte) (int, error) { select {} }

func (s *recordingStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.writes = append(s.writes, bytes.Clone(p))
	s.mu.Unlock()
	s.wrote <- struct{}{}
	return len(p), nil
}

// TestStreamWriteBatches: frames queued while the writer was busy leave in
// one write (one TLS record, one system call), control frames first and
// data in queue order, never more than about streamBatch bytes at once;
// a lone frame leaves at once on its own.
func TestStreamWriteBatches(t *testing.T) {
	rs := &recordingStream{wrote: make(chan struct{}, 100)}
	l := newLink(PathTCP, nil, rs, tls.ConnectionState{}, func(quic.ApplicationErrorCode, string) {}, 64, func(string) {})
	frame := func(b byte, n int) []byte { return append(newFrame(n), bytes.Repeat([]byte{b}, n)...) }
	// 20 data frames of 1200 bytes (24000 bytes: more than one batch) and
	// one control frame, queued before the writer starts.
	var want []byte
	for i := range 20 {
		if !l.sendData(frame(byte(i), 1200)) {
			t.Fatal("queue full")
		}
	}
	if err := l.sendCtrl(t.Context(), []byte("ctrl")); err != nil {
		t.Fatal(err)
	}
	want = append(want, "ctrl"...)
	for i := range 20 {
		want = append(want, bytes.Repeat([]byte{byte(i)}, 1200)...)
	}
	done := make(chan error, 1)
	go func() { done <- l.writeLoop() }()
	waitWrites := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-rs.wrote:
			case <-time.After(5 * time.Second):
				t.Fatal("no write")
			}
		}
	}
	waitWrites(2)
	rs.mu.Lock()
	got := bytes.Join(rs.writes, nil)
	n0, n1 := len(rs.writes[0]), len(rs.writes[1])
	rs.mu.Unlock()
	if !bytes.Equal(got, want) {
		t.Fatalf("bytes written differ from the frames in order (%d vs %d bytes)", len(got), len(want))
	}
	if n0 < streamBatch || n0 > streamBatch+pooledFrame {
		t.Fatalf("first write %d bytes, want one batch of %d..%d", n0, streamBatch, streamBatch+pooledFrame)
	}
	t.Logf("21 frames in 2 writes: %d + %d bytes", n0, n1)
	// A lone frame is not held back for more.
	l.sendData(frame(0xee, 100))
	waitWrites(1)
	rs.mu.Lock()
	last := rs.writes[len(rs.writes)-1]
	rs.mu.Unlock()
	if len(last) != 100 {
		t.Fatalf("lone frame written as %d bytes", len(last))
	}
	l.close(codeShutdown, "test")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSmallFramesFirst: consensus first (issue #15). Small data frames
// (heartbeats, acknowledgements) queued behind full-size ones leave first,
// after control frames; the full-size ones keep their order.
func TestSmallFramesFirst(t *testing.T) {
	rs := &recordingStream{wrote: make(chan struct{}, 100)}
	l := newLink(PathTCP, nil, rs, tls.ConnectionState{}, func(quic.ApplicationErrorCode, string) {}, 64, func(string) {})
	frame := func(b byte, n int) []byte { return append(newFrame(n), bytes.Repeat([]byte{b}, n)...) }
	var want []byte
	for i := range 5 {
		l.sendData(frame(byte(i), 1200))
	}
	l.sendData(frame(0xa1, urgentFrame))
	l.sendData(frame(0xa2, 40))
	if err := l.sendCtrl(t.Context(), []byte("ctrl")); err != nil {
		t.Fatal(err)
	}
	want = append(want, "ctrl"...)
	want = append(want, bytes.Repeat([]byte{0xa1}, urgentFrame)...)
	want = append(want, bytes.Repeat([]byte{0xa2}, 40)...)
	for i := range 5 {
		want = append(want, bytes.Repeat([]byte{byte(i)}, 1200)...)
	}
	done := make(chan error, 1)
	go func() { done <- l.writeLoop() }()
	select {
	case <-rs.wrote:
	case <-time.After(5 * time.Second):
		t.Fatal("no write")
	}
	rs.mu.Lock()
	got := bytes.Join(rs.writes, nil)
	rs.mu.Unlock()
	if !bytes.Equal(got, want) {
		t.Fatalf("written %d bytes not in the order control, small, full-size (want %d bytes)", len(got), len(want))
	}
	l.close(codeShutdown, "test")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestQUICBulkOnStream: on QUIC, small data frames go as DATAGRAMs and
// full-size ones on the stream, in order, batched (issue #15: one
// sendmsg per DATAGRAM, and DATAGRAMs dropped in quic-go's receive queue).
func TestQUICBulkOnStream(t *testing.T) {
	cert := testpki.SelfSigned(t, "link").TLS()
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"t"}},
		&quic.Config{EnableDatagrams: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	qa, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"t"}},
		&quic.Config{EnableDatagrams: true})
	if err != nil {
		t.Fatal(err)
	}
	defer qa.CloseWithError(0, "")
	qb, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer qb.CloseWithError(0, "")
	st, err := qa.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := quicLink(qa, st, 64, func(string) {})
	done := make(chan error, 1)
	go func() { done <- l.writeLoop() }()
	defer func() {
		l.close(codeShutdown, "test")
		<-done
	}()

	packet := func(b byte, n int) []byte {
		return wire.AppendPacket(newFrame(wire.PacketOverhead+n), "member-b", bytes.Repeat([]byte{b}, n))
	}
	const big, small = 20, 3
	for i := range big {
		l.sendData(packet(byte(i), 1300))
		if i%7 == 0 {
			l.sendData(packet(0xf0+byte(i/7), 60))
		}
	}
	// The full-size packets arrive on the stream, in order.
	sb, err := qb.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(sb, wire.MaxBody)
	for i := range big {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("stream frame %d: %v", i, err)
		}
		_, payload, err := wire.ParsePacket(f.Body)
		if err != nil || len(payload) != 1300 || payload[0] != byte(i) {
			t.Fatalf("stream frame %d: %d bytes starting %x (%v), want packet %d of 1300 bytes", i, len(payload), payload[:1], err, i)
		}
	}
	// The small ones as DATAGRAMs.
	for i := range small {
		b, err := qb.ReceiveDatagram(ctx)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		f, err := wire.ParseDatagram(b)
		if err != nil {
			t.Fatal(err)
		}
		_, payload, err := wire.ParsePacket(f.Body)
		if err != nil || len(payload) != 60 {
			t.Fatalf("datagram %d: %d bytes (%v), want a 60-byte packet", i, len(payload), err)
		}
	}
}

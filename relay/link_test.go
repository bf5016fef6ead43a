package relay

import (
	"bytes"
	"crypto/tls"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
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

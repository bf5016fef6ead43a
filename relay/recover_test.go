package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/internal/logtest"
	"github.com/memberd/memberd/relay/wire"
)

// TestLinkPanicClosesOnlyThatLink: a frame handler that panics (a bug
// reached by a peer's frame) ends that link with an error wrapping
// errPanic, closes it, and is counted and logged with its stack; the
// goroutine returns instead of killing the process.
func TestLinkPanicClosesOnlyThatLink(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	l := newLink(PathTCP, nil, a, tls.ConnectionState{}, func(quic.ApplicationErrorCode, string) { a.Close() }, 8, func(string) {})
	go b.Write(wire.AppendFrame(nil, wire.TypePing, make([]byte, 8)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := l.run(ctx, func(wire.Frame, bool) {
		var m map[string]int
		m["x"]++ // a real runtime panic
	})
	if !errors.Is(err, errPanic) || !strings.Contains(err.Error(), "assignment to entry in nil map") {
		t.Fatalf("run: %v, want the panic as an error", err)
	}
	if strings.Contains(err.Error(), "recover_test.go") {
		t.Errorf("the error (shown by memberd status) carries the stack: %v", err)
	}
	select {
	case <-l.done:
	default:
		t.Fatal("link not closed")
	}
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, "memberd_relay", "relay")
	var logs bytes.Buffer
	done, stop := context.WithCancel(ctx)
	stop() // no pause after the panic in a test
	if !m.survived(done, slog.New(slog.NewTextHandler(&logs, nil)), err, "remote", "10.0.0.9:443") {
		t.Fatal("survived did not see the panic")
	}
	if m.survived(done, slog.New(slog.DiscardHandler), errors.New("EOF")) {
		t.Fatal("survived counted a plain error")
	}
	if n := logtest.Counter(t, reg, "memberd_relay_panics_total"); n != 1 {
		t.Errorf("memberd_relay_panics_total = %v, want 1", n)
	}
	if !strings.Contains(logs.String(), "recover_test.go") || !strings.Contains(logs.String(), "remote=10.0.0.9:443") {
		t.Errorf("log lacks the stack or the remote:\n%s", logs.String())
	}
}

package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// sdSocket is a notify socket like systemd's: a unixgram socket whose path
// goes into NOTIFY_SOCKET.
func sdSocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

// sdRead returns the next datagram, or "" when none arrives within d.
func sdRead(t *testing.T, c *net.UnixConn, d time.Duration) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifySystemdWithoutSocketDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	var calls atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- NotifySystemd(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)),
			Probe{Alive: func() { calls.Add(1) }})
	}()
	select {
	case err := <-done:
		if err != nil || calls.Load() != 0 {
			t.Fatalf("err %v, alive called %d times; want nil and 0", err, calls.Load())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("notifySystemd without NOTIFY_SOCKET did not return")
	}
}

// READY=1 only once ready passes (the start timeout extended until then),
// WATCHDOG=1 only while alive returns, STOPPING=1 at the end.
func TestNotifySystemdReadyWatchdogStopping(t *testing.T) {
	sock := sdSocket(t)
	const wd = 200 * time.Millisecond
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", "")
	var notReady atomic.Int32
	notReady.Store(2)
	wedge := make(chan struct{})
	var wedged atomic.Bool
	p := Probe{
		Ready: func(context.Context) error {
			if notReady.Add(-1) >= 0 {
				return errors.New("relay: no relay connected")
			}
			return nil
		},
		Alive: func() {
			if wedged.Load() {
				<-wedge
			}
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NotifySystemd(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), p) }()

	m := sdRead(t, sock, 5*time.Second)
	if !strings.Contains(m, "STATUS=waiting: relay: no relay connected") || !strings.Contains(m, "EXTEND_TIMEOUT_USEC=30000000") || strings.Contains(m, "READY=1") {
		t.Fatalf("first message %q: want the waiting status and a start timeout extension, no READY", m)
	}
	m = sdRead(t, sock, 5*time.Second)
	if strings.Contains(m, "STATUS=") || !strings.Contains(m, "EXTEND_TIMEOUT_USEC=") || strings.Contains(m, "READY=1") {
		t.Fatalf("second message %q: want only the extension (same status) and no READY", m)
	}
	m = sdRead(t, sock, 5*time.Second)
	if !strings.Contains(m, "READY=1") || !strings.Contains(m, "STATUS=running") {
		t.Fatalf("third message %q: want READY=1", m)
	}
	for i := range 3 {
		if m = sdRead(t, sock, 4*wd); m != "WATCHDOG=1" {
			t.Fatalf("watchdog message %d: %q, want WATCHDOG=1 every %v", i, m, wd/2)
		}
	}
	wedged.Store(true)
	sdRead(t, sock, wd) // at most one already on its way
	if m = sdRead(t, sock, 3*wd); m != "" {
		t.Fatalf("wedged (alive blocks) but systemd got %q", m)
	}
	close(wedge)
	if m = sdRead(t, sock, 4*wd); m != "WATCHDOG=1" {
		t.Fatalf("after the wedge cleared: %q, want WATCHDOG=1", m)
	}
	cancel()
	for {
		m = sdRead(t, sock, 5*time.Second)
		if m != "WATCHDOG=1" {
			break
		}
	}
	if m != "STOPPING=1\nSTATUS=stopping" {
		t.Fatalf("at stop: %q, want STOPPING=1", m)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

package push_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
	"github.com/memberd/memberd/policy/push"
)

// TestPushWire: a push round-trips; bad magic, zero and oversized lengths
// and short bodies are refused before allocating.
func TestPushWire(t *testing.T) {
	var buf bytes.Buffer
	if err := push.WriteRequest(&buf, []byte("bundle")); err != nil {
		t.Fatal(err)
	}
	got, err := push.ReadRequest(&buf)
	if err != nil || string(got) != "bundle" {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	for name, in := range map[string]string{
		"magic":     "NOTPUSH\n\x00\x00\x00\x01x",
		"zero":      push.Magic + "\x00\x00\x00\x00",
		"oversized": push.Magic + "\xff\xff\xff\xff",
		"short":     push.Magic + "\x00\x00\x00\x05abc",
		"truncated": push.Magic[:3],
	} {
		if _, err := push.ReadRequest(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := push.WriteRequest(&buf, nil); err == nil {
		t.Error("empty bundle written")
	}
}

func FuzzReadPush(f *testing.F) {
	var ok bytes.Buffer
	push.WriteRequest(&ok, []byte("format: memberd-policy/v1\n"))
	f.Add(ok.Bytes())
	f.Add([]byte(push.Magic + "\x00\x00\x00\x00"))
	f.Add([]byte(push.Magic + "\x00\x40\x00\x01"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := push.ReadRequest(bytes.NewReader(b))
		if err != nil {
			return
		}
		var re bytes.Buffer
		if err := push.WriteRequest(&re, got); err != nil {
			t.Fatalf("accepted a bundle it cannot write back: %v", err)
		}
		if !bytes.HasPrefix(b, re.Bytes()) {
			t.Fatal("re-encoding differs from the input")
		}
	})
}

// TestStoreBundle: a pushed bundle lands atomically under a name carrying
// its version; storing it again is a no-op; garbage is refused and leaves
// nothing behind (not even a temp file).
func TestStoreBundle(t *testing.T) {
	dir := t.TempDir()
	c := policytest.New(t, 2)
	g := c.Genesis(t)
	name, err := push.Store(dir, g.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "pushed-v000001-") || !strings.HasSuffix(name, ".yaml") || strings.Contains(name, ":") {
		t.Fatalf("name %q", name)
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil || !bytes.Equal(b, g.Marshal()) {
		t.Fatalf("stored %d bytes, %v", len(b), err)
	}
	if again, err := push.Store(dir, g.Marshal()); err != nil || again != name {
		t.Fatalf("again: %q %v", again, err)
	}
	if _, err := push.Store(dir, []byte("not: a: policy")); err == nil {
		t.Fatal("garbage stored")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("folder holds %d entries, want 1", len(ents))
	}
	if _, err := policy.Parse(b); err != nil {
		t.Fatal(err)
	}
}

// TestServeExchange: a bundle pushed over a real loopback connection lands
// in the served folder and the pusher hears its file name; garbage is
// refused with the member's reason; Serve returns once ctx ends.
func TestServeExchange(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { push.Serve(ctx, ln, dir, nil, nil); close(done) }()
	exchange := func(bundle []byte) (string, error) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return push.Exchange(c, "bank-b", bundle)
	}
	g := policytest.New(t, 2).Genesis(t)
	name, err := exchange(g.Marshal())
	if err != nil || !strings.HasPrefix(name, "pushed-v000001-") {
		t.Fatalf("push: %q, %v", name, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(b, g.Marshal()) {
		t.Fatalf("stored %d bytes, %v", len(b), err)
	}
	if _, err := exchange([]byte("not: a: policy")); err == nil || !strings.Contains(err.Error(), "bank-b refused: not a policy bundle") {
		t.Fatalf("garbage: %v", err)
	}
	cancel()
	<-done
}

// TestServeVerdict: with the member's policy watcher as Decider, the pusher
// hears what the member did with the bundle, not only that it was stored:
// a good next version is "applied", an under-signed one is refused with
// the watcher's reason (though stored), and a replayed older one is
// refused as a rollback.
func TestServeVerdict(t *testing.T) {
	c := policytest.New(t, 3)
	g := c.Genesis(t)
	dir, state := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "genesis.yaml"), g.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.Options{Dir: dir, StateDir: state, Genesis: g.Hash(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Debounce: 20 * time.Millisecond, Resync: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wdone, sdone := make(chan error, 1), make(chan struct{})
	go func() { wdone <- w.Run(ctx) }()
	go func() { push.Serve(ctx, ln, dir, w, nil); close(sdone) }()
	defer func() {
		cancel()
		<-sdone
		if err := <-wdone; err != nil {
			t.Error(err)
		}
	}()
	exchange := func(bundle []byte) (string, error) {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(push.Timeout))
		return push.Exchange(conn, "m2", bundle)
	}
	v2 := c.Next(t, g, nil, "m1", "m2")
	if got, err := exchange(v2.Marshal()); err != nil || !strings.HasSuffix(got, " applied: version 2") {
		t.Fatalf("v2: %q, %v", got, err)
	}
	if w.Current().Version() != 2 {
		t.Fatalf("watcher at version %d after the answer, want 2", w.Current().Version())
	}
	under := c.Next(t, v2, nil, "m1")
	_, err = exchange(under.Marshal())
	if err == nil || !strings.Contains(err.Error(), "m2 refused: stored as pushed-v000003-") ||
		!strings.Contains(err.Error(), "refused by the member's policy watcher: "+policy.ReasonQuorum) {
		t.Fatalf("under-signed v3: %v", err)
	}
	if _, err := exchange(g.Marshal()); err == nil || !strings.Contains(err.Error(), policy.ReasonRollback) {
		t.Fatalf("replayed genesis: %v", err)
	}
}

package consortium_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/loopport"
	"github.com/memberd/memberd/internal/streamtest"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/tunnel"
)

// testLogger sends logs to t.Log (warnings and errors only, to keep the
// output readable; MEMBERD_TEST_LOG=debug for everything).
func testLogger(t testing.TB) *slog.Logger {
	lvl := slog.LevelWarn
	if os.Getenv("MEMBERD_TEST_LOG") == "debug" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: lvl}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// initConsortium writes a demo consortium (SoftHSM2 identities) into a
// temporary folder; edit may change member configs before anything runs.
func initConsortium(t testing.TB, members, relays int) *demo.Layout {
	t.Helper()
	testenv.SoftHSMModule(t)
	L, err := demo.Init(demo.Options{Dir: t.TempDir(), Members: members, Relays: relays, HSM: "softhsm"})
	if err != nil {
		t.Fatal(err)
	}
	// The members run in this process, and their PKCS#11 module reads
	// its token folder from the environment (DemoInit does not set it).
	t.Setenv("SOFTHSM2_CONF", L.SoftHSMConf)
	return L
}

// start runs the consortium until the test ends and waits for every member
// to be connected to every relay.
func start(t testing.TB, L *demo.Layout, o *demo.RunOptions) *demo.Consortium {
	t.Helper()
	if o == nil {
		o = &demo.RunOptions{}
	}
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := demo.Start(ctx, L, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Stop()
		cancel()
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := d.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// startEchoing starts a consortium of members and relays whose members all
// echo on echoPort, for a test that must end within timeout (ctx).
func startEchoing(t *testing.T, members, relays int, timeout time.Duration) (*demo.Layout, *demo.Consortium, context.Context) {
	t.Helper()
	L := initConsortium(t, members, relays)
	d := start(t, L, nil)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	if err := d.ServeEcho(ctx, echoPort); err != nil {
		t.Fatal(err)
	}
	return L, d, ctx
}

// editMemberConfig rewrites a member's memberd.yaml through edit.
func editMemberConfig(t testing.TB, L *demo.Layout, member string, edit func(m map[string]any)) {
	t.Helper()
	if err := confyaml.EditFile(L.MemberConfig[member], edit); err != nil {
		t.Fatal(err)
	}
}

// nextPolicy makes the version after prev, edited by edit and signed by the
// admin of every member in signers.
func nextPolicy(t *testing.T, L *demo.Layout, prev *policy.Policy, edit func(d *policy.Document), signers ...string) *policy.Policy {
	t.Helper()
	var d policy.Document
	if err := yaml.Unmarshal(prev.DocumentBytes(), &d); err != nil {
		t.Fatal(err)
	}
	d.Version = prev.Version() + 1
	d.Previous = prev.Hash().String()
	edit(&d)
	b, err := policy.MarshalDocument(&d)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range signers {
		k, err := hsm.OpenSoftSigner(L.AdminKey[m], &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		p, err = p.Sign(k, policy.AdminRef{Member: m, KeyID: "a1"})
		k.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pair opens a TCP connection from member a to member b on port through
// the tunnel and returns both ends.
func pair(t testing.TB, ctx context.Context, a, b *tunnel.Device, bName string, port uint16) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := b.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(acc)
			return
		}
		acc <- c
	}()
	ca, err := a.Dial(ctx, bName, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })
	select {
	case cb, ok := <-acc:
		if !ok {
			t.Fatal("accept failed")
		}
		t.Cleanup(func() { cb.Close() })
		return ca, cb
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	return nil, nil
}

// transfer sends n pattern bytes from w to r and checks them by hash;
// progress, if set, sees the bytes received so far.
func transfer(ctx context.Context, w, r net.Conn, n int64, seed byte, progress func(int64)) error {
	return streamtest.Transfer(ctx, w, r, n, seed, progress)
}

func ioReadFull(r io.Reader, b []byte) (int, error) { return io.ReadFull(r, b) }

func asErr(err error, target any) bool { return errors.As(err, target) }

// freePort returns a loopback address free now, below the ephemeral port
// range (the stock peer binds it later), and its port.
func freePort(t *testing.T) (string, string) {
	t.Helper()
	a, err := loopport.Free()
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(a)
	return a, p
}

func dialTCP(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) }

// openConn opens a connection inside the tunnel from member from to member
// to (port) and checks that bytes pass; it returns from's end.
func openConn(t *testing.T, ctx context.Context, d *demo.Consortium, from, to string, port uint16) net.Conn {
	t.Helper()
	x, y := pair(t, ctx, d.Device(from), d.Device(to), to, port)
	if _, err := x.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	y.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(y, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	return x
}

// expectClosed checks that c gets closed (not merely silent) within 10 s.
func expectClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 5)); err == nil || isTimeout(err) {
		t.Fatalf("%s still open (read: %v)", what, err)
	}
}

// expectCutOff checks that removed member can no longer reach other while
// survivor still can (both on echoPort).
func expectCutOff(t *testing.T, ctx context.Context, d *demo.Consortium, removed, other, survivor string) {
	t.Helper()
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	defer dcancel()
	if conn, err := d.Device(removed).Dial(dctx, other, echoPort); err == nil {
		conn.Close()
		t.Fatalf("removed member %s still reaches %s", removed, other)
	}
	if conn, err := d.Device(survivor).Dial(dctx, other, echoPort); err != nil {
		t.Fatalf("%s → %s after %s's removal: %v", survivor, other, removed, err)
	} else {
		conn.Close()
	}
}

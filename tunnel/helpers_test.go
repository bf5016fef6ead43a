package tunnel_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/streamtest"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// cluster is N members over one in-memory network.
type cluster struct {
	t     testing.TB
	net   *tunneltest.Network
	specs []tunneltest.MemberSpec
	auth  *tunneltest.Authority
	devs  map[string]*tunnel.Device
	cfgs  map[string]tunnel.Config
}

type clusterOpts struct {
	net    tunneltest.Options
	acl    func(from, to string, port uint16) bool
	config func(*tunnel.Config) // adjust each member's config
	quiet  bool
}

func memberName(i int) string { return fmt.Sprintf("bank-%c", 'a'+i) }

func newCluster(t testing.TB, n int, o clusterOpts) *cluster {
	t.Helper()
	c := &cluster{t: t, net: tunneltest.NewNetwork(o.net), devs: map[string]*tunnel.Device{}, cfgs: map[string]tunnel.Config{}}
	for i := range n {
		id := memberName(i)
		c.specs = append(c.specs, tunneltest.MemberSpec{ID: id, Addr: netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}), CA: testpki.NewCA(t, id)})
	}
	c.auth = tunneltest.NewAuthority(c.specs, o.acl)
	for _, s := range c.specs {
		signer, chain := s.CA.Issue(t, "appliance").Identity()
		cfg := tunnel.Config{
			Member: s.ID, Signer: signer, Chain: chain,
			Transport: c.net.Transport(s.ID), Authority: c.auth,
		}
		if !o.quiet {
			cfg.Logger = testLogger(t).With("member", s.ID) // as cmd names it
		}
		if o.config != nil {
			o.config(&cfg)
		}
		d, err := tunnel.New(cfg)
		if err != nil {
			t.Fatalf("New(%s): %v", s.ID, err)
		}
		c.devs[s.ID] = d
		c.cfgs[s.ID] = cfg
		t.Cleanup(func() {
			start := time.Now()
			d.Close()
			if el := time.Since(start); el > time.Second {
				t.Logf("Close(%s) took %v", s.ID, el)
			}
		})
		tunneltest.Start(t, d)
	}
	return c
}

// waitPeers waits until every device has an active peer for every other.
func (c *cluster) waitPeers(ctx context.Context) {
	c.t.Helper()
	for {
		ok := true
		for _, d := range c.devs {
			if len(activePeers(d)) < len(c.devs)-1 {
				ok = false
			}
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("peers not configured in time")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func activePeers(d *tunnel.Device) []tunnel.PeerStatus {
	var out []tunnel.PeerStatus
	for _, p := range d.Peers() {
		if !p.PublicKey.IsZero() {
			out = append(out, p)
		}
	}
	return out
}

// tlogWriter logs through t until the test's cleanup, then drops:
// wireguard-go's workers may log after Device.Close returns.
type tlogWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	w := &tlogWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: testLogLevel}))
}

func newPattern(seed byte) io.Reader { return streamtest.NewPattern(seed) }

// transfer sends n pattern bytes from w to r and checks them by hash.
func transfer(ctx context.Context, w, r net.Conn, n int64, seed byte) error {
	return streamtest.Transfer(ctx, w, r, n, seed, nil)
}

func acceptOne(t testing.TB, ln net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

// connect dials from a to b:port and returns both ends.
func connect(t testing.TB, ctx context.Context, a, b *tunnel.Device, bName string, port uint16) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := b.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acc := acceptOne(t, ln)
	ca, err := a.Dial(ctx, bName, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })
	cb, ok := <-acc
	if !ok {
		t.FailNow()
	}
	t.Cleanup(func() { cb.Close() })
	return ca, cb
}

// stream writes pattern bytes on w until stop is closed, then half-closes;
// the reader checks every byte against the same pattern until EOF. It
// returns the number of bytes checked.
func stream(w, r net.Conn, seed byte, stop <-chan struct{}) (int64, error) {
	return pacedStream(w, r, seed, stop, 0)
}

// pacedStream is stream with a pause between 16 KiB writes.
func pacedStream(w, r net.Conn, seed byte, stop <-chan struct{}, pace time.Duration) (int64, error) {
	werr := make(chan error, 1)
	go func() {
		src := newPattern(seed)
		buf := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				err := w.(interface{ CloseWrite() error }).CloseWrite()
				werr <- err
				return
			default:
			}
			if pace > 0 {
				time.Sleep(pace)
			}
			src.Read(buf)
			_, err := w.Write(buf)
			if err != nil {
				werr <- fmt.Errorf("write: %w", err)
				return
			}
		}
	}()
	want := newPattern(seed)
	buf := make([]byte, 32<<10)
	exp := make([]byte, 32<<10)
	var total int64
	last, maxGap, maxAt := time.Now(), time.Duration(0), int64(0)
	defer func() { streamGapHook(maxGap, maxAt) }()
	for {
		n, err := r.Read(buf)
		if g := time.Since(last); n > 0 && g > maxGap {
			maxGap, maxAt = g, total
		}
		last = time.Now()
		if n > 0 {
			want.Read(exp[:n])
			if !bytes.Equal(buf[:n], exp[:n]) {
				return total, fmt.Errorf("stream corrupted after %d bytes", total)
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, <-werr
		}
		if err != nil {
			return total, fmt.Errorf("read after %d bytes: %w", total, err)
		}
	}
}

var testLogLevel = func() slog.Level {
	if os.Getenv("TUNNEL_TEST_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}()

// streamGapHook lets a test see the longest pause of a stream.
var streamGapHook = func(gap time.Duration, at int64) {}

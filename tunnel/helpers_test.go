package tunnel_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

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
		c.specs = append(c.specs, tunneltest.MemberSpec{ID: id, Addr: netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}), CA: tunneltest.NewCA(t, id)})
	}
	c.auth = tunneltest.NewAuthority(c.specs, o.acl)
	for _, s := range c.specs {
		signer, chain := s.CA.NewIdentity(t)
		cfg := tunnel.Config{
			Member: s.ID, Signer: signer, Chain: chain,
			Transport: c.net.Transport(s.ID), Authority: c.auth,
		}
		if !o.quiet {
			cfg.Logger = testLogger(t)
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
		t.Cleanup(func() { d.Close() })
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

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// patternReader yields a deterministic pseudo-random byte stream.
type patternReader struct{ rng *rand.ChaCha8 }

func newPattern(seed byte) io.Reader {
	var s [32]byte
	s[0] = seed
	return &patternReader{rng: rand.NewChaCha8(s)}
}

func (p *patternReader) Read(b []byte) (int, error) {
	p.rng.Read(b)
	return len(b), nil
}

// transfer sends n pattern bytes from a to b over conns and checks them
// byte for byte on the receiving side (through SHA-256 of both streams).
// It returns the first error, or a mismatch error.
func transfer(ctx context.Context, w, r net.Conn, n int64, seed byte) error {
	errc := make(chan error, 2)
	var sent, got [32]byte
	go func() {
		h := sha256.New()
		_, err := io.CopyN(io.MultiWriter(w, h), newPattern(seed), n)
		copy(sent[:], h.Sum(nil))
		errc <- err
	}()
	go func() {
		h := sha256.New()
		m, err := io.CopyN(h, r, n)
		copy(got[:], h.Sum(nil))
		if err == nil && m != n {
			err = fmt.Errorf("received %d of %d bytes", m, n)
		}
		errc <- err
	}()
	for range 2 {
		select {
		case err := <-errc:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			w.Close()
			r.Close()
			<-errc
			<-errc
			return ctx.Err()
		}
	}
	if sent != got {
		return errors.New("received bytes differ from sent bytes")
	}
	return nil
}

// acceptOne accepts a single connection in the background.
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

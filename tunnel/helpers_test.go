package tunnel_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
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
	w.t.Log(string(p))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

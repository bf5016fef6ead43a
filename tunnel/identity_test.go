package tunnel_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// revoking is a policy snapshot that refuses one certificate serial.
type revoking struct {
	*tunneltest.Authority
	serial *big.Int
}

func (r revoking) VerifyMemberCert(member string, chain []*x509.Certificate) error {
	if len(chain) > 0 && chain[0].SerialNumber.Cmp(r.serial) == 0 {
		return fmt.Errorf("certificate serial %s of %s is revoked", r.serial, member)
	}
	return r.Authority.VerifyMemberCert(member, chain)
}

// TestIdentityRotationThenRevocationKeepsPeer: bank-a's identity rotates
// (new key and certificate from its member CA) while a TCP connection runs
// inside the tunnel; SetIdentity re-signs its attestation and peers take the
// new one; then the policy revokes the old certificate. Without SetIdentity
// the peers would cut bank-a at the revocation (their attestation of its key
// would still carry the old certificate). Afterwards a WireGuard key
// rotation of bank-a is accepted and the same connection keeps carrying
// data.
func TestIdentityRotationThenRevocationKeepsPeer(t *testing.T) {
	c := newCluster(t, 3, clusterOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a, b, cc := c.devs["bank-a"], c.devs["bank-b"], c.devs["bank-c"]
	aSide, bSide := connect(t, ctx, a, b, "bank-b", 7050)
	if err := transfer(ctx, aSide, bSide, 64<<10, 1); err != nil {
		t.Fatal(err)
	}
	old := a.Identity()

	signer, chain := c.specs[0].CA.Issue(t, "appliance").Identity()
	if err := a.SetIdentity(signer, chain); err != nil {
		t.Fatal(err)
	}
	if got := a.Identity(); got.SerialNumber.Cmp(chain[0].SerialNumber) != 0 {
		t.Fatalf("Identity() serial %s, want %s", got.SerialNumber, chain[0].SerialNumber)
	}
	// Both peers hold the re-signed attestation of the same key.
	waitForCond(t, ctx, "peers to take bank-a's re-signed attestation", func() bool {
		for _, d := range []*tunnel.Device{b, cc} {
			p := peerOf(d, "bank-a")
			if p == nil || p.Certificate == nil || p.Certificate.SerialNumber.Cmp(chain[0].SerialNumber) != 0 || p.PublicKey != a.PublicKey() {
				return false
			}
		}
		return true
	})

	pol := revoking{Authority: c.auth, serial: old.SerialNumber}
	for _, d := range c.devs {
		d.SetAuthority(pol)
	}
	for _, d := range []*tunnel.Device{b, cc} {
		if peerOf(d, "bank-a") == nil {
			t.Fatal("peer bank-a removed by the revocation of its old certificate although it re-attested")
		}
	}
	if err := transfer(ctx, aSide, bSide, 64<<10, 2); err != nil {
		t.Fatalf("connection after revocation: %v", err)
	}

	// A WireGuard key rotation signed with the new identity is accepted.
	refused := b.Stats().AttestationsRefused
	oldKey := a.PublicKey()
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	waitForCond(t, ctx, "peers to switch to bank-a's new WireGuard key", func() bool {
		for _, d := range []*tunnel.Device{b, cc} {
			p := peerOf(d, "bank-a")
			if p == nil || p.PublicKey != a.PublicKey() || p.PublicKey == oldKey {
				return false
			}
		}
		return true
	})
	if got := b.Stats().AttestationsRefused; got != refused {
		t.Fatalf("bank-b refused %d attestations during the rotation", got-refused)
	}
	if err := transfer(ctx, bSide, aSide, 256<<10, 3); err != nil {
		t.Fatalf("connection after key rotation: %v", err)
	}
	x, y := connect(t, ctx, cc, a, "bank-a", 7051)
	if err := transfer(ctx, x, y, 64<<10, 4); err != nil {
		t.Fatalf("new connection from bank-c: %v", err)
	}
	if got := a.Stats().IdentityChanges; got != 1 {
		t.Fatalf("IdentityChanges = %d, want 1", got)
	}
}

// TestSetIdentityRefused: a key that does not match the certificate, or a
// certificate the policy does not accept for the member, is refused and the
// old identity stays; the same identity again is a no-op.
func TestSetIdentityRefused(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{quiet: true})
	a := c.devs["bank-a"]
	old := a.Identity()

	signer, chain := c.specs[0].CA.Issue(t, "appliance").Identity()
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := a.SetIdentity(other, chain); !errors.Is(err, tunnel.ErrIdentity) {
		t.Fatalf("mismatched key: %v, want ErrIdentity", err)
	}
	// A certificate from bank-b's CA is not an identity of bank-a.
	foreign := c.specs[1].CA.Issue(t, "appliance", testpki.Key(signer), testpki.Valid(time.Now().Add(-time.Hour), time.Now().Add(time.Hour))).Chain()
	err := a.SetIdentity(signer, foreign)
	if !errors.Is(err, tunnel.ErrIdentity) || !strings.Contains(err.Error(), "does not accept") {
		t.Fatalf("foreign certificate: %v, want ErrIdentity (policy)", err)
	}
	if err := a.SetIdentity(nil, nil); !errors.Is(err, tunnel.ErrIdentity) {
		t.Fatalf("nil: %v", err)
	}
	if a.Identity() != old {
		t.Fatal("identity changed after refusals")
	}
	if err := a.SetIdentity(c.cfgs["bank-a"].Signer, c.cfgs["bank-a"].Chain); err != nil {
		t.Fatalf("same identity: %v", err)
	}
	if got := a.Stats().IdentityChanges; got != 0 {
		t.Fatalf("IdentityChanges = %d after refusals and a no-op", got)
	}
}

// TestPeerLastHandshake: after a connection, the peer status carries the
// time of the last WireGuard handshake.
func TestPeerLastHandshake(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{quiet: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now().Add(-time.Second)
	a, b := c.devs["bank-a"], c.devs["bank-b"]
	x, y := connect(t, ctx, a, b, "bank-b", 7050)
	if err := transfer(ctx, x, y, 16<<10, 1); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*tunnel.Device{a, b} {
		for _, p := range d.Peers() {
			if p.LastHandshake.Before(start) || p.LastHandshake.After(time.Now()) {
				t.Fatalf("peer %s: last handshake %v, want between %v and now", p.Member, p.LastHandshake, start)
			}
		}
	}
}

// TestMetrics: the collectors registered through Config.Registerer count
// packets and bytes both ways, accepted and refused (by reason)
// attestations and rotations; Close unregisters them.
func TestMetrics(t *testing.T) {
	regs := map[string]*prometheus.Registry{}
	c := newCluster(t, 2, clusterOpts{quiet: true, config: func(cfg *tunnel.Config) {
		r := prometheus.NewRegistry()
		regs[cfg.Member] = r
		cfg.Registerer = r
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := c.devs["bank-a"], c.devs["bank-b"]
	x, y := connect(t, ctx, a, b, "bank-b", 7050)
	if err := transfer(ctx, x, y, 256<<10, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	// An attestation bank-b sends in bank-a's name is refused ("sender").
	k, _ := tunnel.NewPrivateKey()
	att, err := tunnel.SignAttestation(c.cfgs["bank-a"].Signer, c.cfgs["bank-a"].Chain, "bank-a", k.PublicKey(), time.Now(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rogue := c.net.Transport("bank-b")
	for _, p := range tunnel.AnnouncePackets(att.Marshal(), true, rogue.MaxPacketSize()) {
		if err := rogue.WritePacket(p, "bank-a"); err != nil {
			t.Fatal(err)
		}
	}
	waitForCond(t, ctx, "the rogue attestation to be refused", func() bool {
		return metricValue(t, regs["bank-a"], "memberd_tunnel_attestations_refused_total", "reason", "sender") >= 1
	})
	ra, rb := regs["bank-a"], regs["bank-b"]
	st := a.Stats()
	for _, m := range []struct {
		reg         *prometheus.Registry
		name, l, lv string
		min         float64
	}{
		{ra, "memberd_tunnel_packets_total", "direction", "out", 100},
		{ra, "memberd_tunnel_packets_total", "direction", "in", 10},
		{ra, "memberd_tunnel_bytes_total", "direction", "out", 256 << 10},
		{rb, "memberd_tunnel_bytes_total", "direction", "in", 256 << 10},
		{ra, "memberd_tunnel_attestations_accepted_total", "", "", 1},
		{ra, "memberd_tunnel_rotations_total", "", "", 1},
		{ra, "memberd_tunnel_peers", "", "", 1},
	} {
		if v := metricValue(t, m.reg, m.name, m.l, m.lv); v < m.min {
			t.Errorf("%s{%s=%q} = %v, want >= %v", m.name, m.l, m.lv, v, m.min)
		}
	}
	if v := metricValue(t, ra, "memberd_tunnel_packets_total", "direction", "out"); v < float64(st.PacketsOut) {
		t.Errorf("packets out metric %v < Stats %d", v, st.PacketsOut)
	}
	if v := metricValue(t, ra, "memberd_tunnel_control_dropped_total", "reason", "queue_full"); v != 0 {
		t.Errorf("control drops (queue_full) = %v, want 0", v)
	}
	a.Close()
	if mfs, _ := ra.Gather(); len(mfs) != 0 {
		t.Fatalf("%d metric families left after Close", len(mfs))
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabel(m, label, value) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func peerOf(d *tunnel.Device, member string) *tunnel.PeerStatus {
	for _, p := range d.Peers() {
		if p.Member == member && !p.PublicKey.IsZero() {
			return &p
		}
	}
	return nil
}

func waitForCond(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestSetIdentityDuringRotation: the identity changes while a WireGuard key
// rotation waits for acknowledgements; the next key's pending attestation is
// re-signed too, so after the old certificate is revoked the peer still
// accepts the switch to the next key.
func TestSetIdentityDuringRotation(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{config: func(cfg *tunnel.Config) { cfg.RotationAckTimeout = 3 * time.Second }})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a, b := c.devs["bank-a"], c.devs["bank-b"]
	x, y := connect(t, ctx, a, b, "bank-b", 7050)
	old := a.Identity()
	// Hold back bank-b's acks so that bank-a's rotation stays in progress.
	c.net.SetFilter(func(from, to string, pkt []byte) bool {
		return !(from == "bank-b" && len(pkt) > 4 && pkt[0] == 0xFF && pkt[4] == 2)
	})
	rotated := make(chan error, 1)
	go func() { rotated <- a.Rotate(ctx) }()
	waitForCond(t, ctx, "bank-b to hold bank-a's next key as pending", func() bool {
		p := peerOf(b, "bank-a")
		return p != nil && !p.PendingKey.IsZero()
	})
	signer, chain := c.specs[0].CA.Issue(t, "appliance").Identity()
	if err := a.SetIdentity(signer, chain); err != nil {
		t.Fatal(err)
	}
	c.net.SetFilter(nil)
	pol := revoking{Authority: c.auth, serial: old.SerialNumber}
	// Revoke as soon as bank-b holds the re-signed active attestation; the
	// pending key's attestation must have been re-signed as well, or
	// SetAuthority drops it and the switch has to wait for a later
	// announcement.
	waitForCond(t, ctx, "bank-b to take the re-signed attestation", func() bool {
		p := peerOf(b, "bank-a")
		return p != nil && p.Certificate.SerialNumber.Cmp(chain[0].SerialNumber) == 0
	})
	a.SetAuthority(pol)
	b.SetAuthority(pol)
	if err := <-rotated; err != nil {
		t.Fatal(err)
	}
	waitForCond(t, ctx, "bank-b to switch to bank-a's next key", func() bool {
		p := peerOf(b, "bank-a")
		return p != nil && p.PublicKey == a.PublicKey() && p.Certificate.SerialNumber.Cmp(chain[0].SerialNumber) == 0
	})
	if err := transfer(ctx, x, y, 128<<10, 5); err != nil {
		t.Fatalf("connection across identity change, revocation and rotation: %v", err)
	}
}

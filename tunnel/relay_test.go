package tunnel_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/relay/relaytest"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// relay.Client is the production PacketTransport.
var _ tunnel.PacketTransport = (*relay.Client)(nil)

// tunnelRelay is one in-process relay of relayClusterN; relaytest.Relay
// owns its sockets.
type tunnelRelay struct {
	info relay.RelayInfo
	cfg  relay.ServerConfig

	srv   *relay.Server
	relay *relaytest.Relay
}

// start runs a new server on the relay's address (again after a crash,
// as a restarted process).
func (r *tunnelRelay) start(t testing.TB) {
	t.Helper()
	srv, err := relay.NewServer(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.srv, r.relay = srv, relaytest.Start(t, r.info.Addr, srv, relaytest.Options{})
}

// crash makes the relay vanish as kill -9 does: the UDP socket goes first,
// so no QUIC CONNECTION_CLOSE reaches its members, only silence.
func (r *tunnelRelay) crash() { r.relay.Crash() }

// relayCluster starts one relay on loopback (QUIC and TCP on one port) and
// two tunnel devices (bank-a, bank-b) whose transports are relay.Clients.
// Everything is closed at cleanup.
func relayCluster(t testing.TB, hook func(from, to string, p []byte)) (map[string]*tunnel.Device, *relay.Server) {
	devs, relays, _ := relayClusterN(t, 1, hook)
	return devs, relays[0].srv
}

// relayClusterN is relayCluster with n relays (relay-1 ... relay-n), each
// member connected to all of them; it also returns the members' relay
// clients.
func relayClusterN(t testing.TB, nRelays int, hook func(from, to string, p []byte)) (map[string]*tunnel.Device, []*tunnelRelay, map[string]*relay.Client) {
	t.Helper()
	return relayClusterWith(t, nRelays, hook, nil)
}

// relayClusterWith is relayClusterN with each member's relay client
// configuration passed through tweak (if not nil) first.
func relayClusterWith(t testing.TB, nRelays int, hook func(from, to string, p []byte), tweak func(member string, c *relay.ClientConfig)) (map[string]*tunnel.Device, []*tunnelRelay, map[string]*relay.Client) {
	t.Helper()

	members := []string{"bank-a", "bank-b"}
	cas := map[string]*testpki.CA{}
	relayCAs := map[string][]*x509.Certificate{}
	for _, m := range members {
		cas[m] = testpki.NewCA(t, m+"-ca")
		relayCAs[m] = []*x509.Certificate{cas[m].Cert}
	}
	var infos []relay.RelayInfo
	var certs []tls.Certificate
	for i := range nRelays {
		id := "relay-" + strconv.Itoa(i+1)
		cert := testpki.SelfSigned(t, id).TLS()
		certs = append(certs, cert)
		infos = append(infos, relay.RelayInfo{ID: id, Addr: relaytest.FreePort(t), Pin: relay.PinOf(cert.Leaf)})
	}
	rauth, err := relay.NewStaticAuthority(relay.StaticPolicy{MemberCAs: relayCAs, AllowAll: true, Relays: infos})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var relays []*tunnelRelay
	for i, info := range infos {
		r := &tunnelRelay{info: info, cfg: relay.ServerConfig{ID: info.ID, Identity: certs[i], Authority: rauth,
			RateBytesPerSec: -1,
			ForwardHook:     hook}}
		relays = append(relays, r)
		r.start(t)
	}

	var specs []tunneltest.MemberSpec
	for i, m := range members {
		specs = append(specs, tunneltest.MemberSpec{ID: m, Addr: netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}), CA: cas[m]})
	}
	tauth := tunneltest.NewAuthority(specs, nil)
	devs := map[string]*tunnel.Device{}
	clients := map[string]*relay.Client{}
	for _, m := range members {
		id := cas[m].Issue(t, m+"-appliance").TLS()
		cfg := relay.ClientConfig{Identity: id, Relays: infos, NoEnvProxy: true,
			QUICTimeout: time.Second, BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond}
		if tweak != nil {
			tweak(m, &cfg)
		}
		cl, err := relay.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		go cl.Run(context.Background()) // until Close
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err = cl.WaitReady(wctx)
		wcancel()
		if err != nil {
			cl.Close()
			t.Fatal(err)
		}
		d, err := tunnel.New(tunnel.Config{Member: m, Signer: id.PrivateKey.(crypto.Signer), Chain: []*x509.Certificate{id.Leaf},
			Transport: cl, Authority: tauth, Logger: quietInBench(t)})
		if err != nil {
			cl.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() }) // closes the relay client (registered after the relays': runs first)
		tunneltest.Start(t, d)
		devs[m] = d
		clients[m] = cl
		t.Logf("%s: relay path %v, max packet %d, tunnel MTU %d", m, cl.Status(), cl.MaxPacketSize(), d.MTU())
	}
	return devs, relays, clients
}

// TestOverRealRelay runs the tunnel over one real relay (QUIC on loopback):
// two members with relay.Client transports, a byte-exact transfer, and the
// relay's forward hook never sees the plaintext marker.
func TestOverRealRelay(t *testing.T) {
	marker := []byte("RELAY-PLAINTEXT-MARKER-51d2")
	var seen, forwarded atomic.Int64
	devs, srv := relayCluster(t, func(from, to string, p []byte) {
		forwarded.Add(1)
		if bytes.Contains(p, marker) {
			seen.Add(1)
		}
	})
	ctx := context.Background()
	tctx, tcancel := context.WithTimeout(ctx, 60*time.Second)
	defer tcancel()
	x, y := connect(t, tctx, devs["bank-a"], devs["bank-b"], "bank-b", 7050)
	n := int64(8 << 20)
	if testing.Short() {
		n = 1 << 20
	}
	if err := transfer(tctx, x, y, n, 13); err != nil {
		t.Fatal(err)
	}
	go x.Write(bytes.Repeat(marker, 500))
	got := make([]byte, 500*len(marker))
	y.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := readFull(y, got); err != nil {
		t.Fatal(err)
	}
	if forwarded.Load() == 0 || seen.Load() != 0 {
		t.Fatalf("relay forwarded %d packets, %d with the plaintext marker", forwarded.Load(), seen.Load())
	}
	t.Logf("relay forwarded %d packets, none with the marker; drops %v", forwarded.Load(), srv.Drops())
}

// quietInBench logs through t in tests and discards in benchmarks.
func quietInBench(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return nil
	}
	return testLogger(t)
}

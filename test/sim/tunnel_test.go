package sim

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/memberd/memberd/node/orderer"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/authority"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/test/sim/simnet"
	"github.com/memberd/memberd/test/sim/simtun"
)

// The tunnel layer of the simulation (TestConsortiumSim): raft between the
// members goes through their tunnels, members -> relays -> members, as in
// the appliance. On the simulated network (simnet) only TLS links exist:
// each member host to each relay (a real relay.Client, DialStream), and
// relay r1 to r2 (the real mesh). Each relay is a real relay.Server over
// the policy (internal/authority, as memberd relay uses it). Each member
// host is a simtun.Host: the real tunnel.Bind and wireguard-go over its
// relay client, with pktstream's streams instead of gVisor's TCP.
//
// Faults on top of the ledger simulation's: a member isolated from both
// relays, a member cut from one relay, a relay crash (connections reset)
// or a relay that vanishes (silent: its links deliver nothing) and comes
// back. Invariant on top: once a relay has applied the policy version that
// removes a member (version 4 here removes the member version 3 took out
// of the consenters), it forwards nothing from or to it (ForwardHook), and
// the removed member's link to it is closed.

// tunnelRaftPort is the overlay port raft listens on.
const tunnelRaftPort = 7050

var relayIDs = []string{"r1", "r2"}

// tunnelNet is the relays and member hosts of one seed.
type tunnelNet struct {
	s      *ledgerSim
	infos  []relay.RelayInfo
	certs  map[string]tls.Certificate
	relays map[string]*simRelay

	mu        sync.Mutex              // guards hosts, keys, removedAt, toRemoved, version
	hosts     map[string]*simtun.Host // by node name, while running
	version   map[string]uint64       // the policy version each relay applied
	removedAt map[string]time.Time    // when each relay applied the removal
	toRemoved map[string]int          // forwarded from/to the removed member after that, by relay
	forwards  atomic.Uint64
	pairs     map[string]int // forwarded, by relay and pair (guarded by mu)
}

// simRelay is one relay "process".
type simRelay struct {
	id     string
	srv    *relay.Server
	ln     net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// tlsSplit cuts TLS records (type, version, 2-byte length); application
// data records may be lost (the connection is then reset, as TCP does
// when it gives up), handshake ones pass.
func tlsSplit(b []byte) (int, bool) {
	if len(b) < 5 {
		return 0, false
	}
	n := 5 + int(binary.BigEndian.Uint16(b[3:5]))
	if len(b) < n {
		return 0, false
	}
	return n, b[0] == 23
}

// linkFaults scales per-frame fault rates drawn for raft's direct links
// to the relay links. Those carry a ping and its answer every 50ms each
// way besides the traffic, and a Spike stalls every frame behind it (TCP
// is in order), so the same per-frame rates reset each link about once a
// second and kept it stalled most of the time: TestHostsThroughRelayDelayed
// (simtun) measured round trips of 0.2 to 6.6 s with a Spike of 0.004,
// and at the rates drawn for raft's links (up to 0.04) no raft connection
// through the tunnel lived long enough to elect a leader for minutes.
// A tenth of the resets and a fiftieth of the stalls still reset some
// link every few seconds and stall one every few tens of seconds.
func linkFaults(f simnet.Faults) simnet.Faults {
	f.Drop /= 10
	f.Spike /= 10
	return f
}

// relayName is the simnet host of a relay address ("r1:443").
func relayName(addr string) string { h, _, _ := strings.Cut(addr, ":"); return h }

func newTunnelNet(s *ledgerSim) *tunnelNet {
	tn := &tunnelNet{s: s, certs: map[string]tls.Certificate{}, relays: map[string]*simRelay{},
		hosts: map[string]*simtun.Host{}, version: map[string]uint64{}, removedAt: map[string]time.Time{}, toRemoved: map[string]int{}, pairs: map[string]int{}}
	for _, id := range relayIDs {
		leaf := testpki.SelfSigned(s.t, id)
		tn.certs[id] = leaf.TLS()
		tn.infos = append(tn.infos, relay.RelayInfo{ID: id, Addr: id + ":443", Pin: relay.PinOf(leaf.Cert)})
	}
	return tn
}

// relayAuthority is the policy as a relay sees it, with the simulation's
// relays (the test consortium's list has no reachable ones).
type relayAuthority struct {
	relay.Authority
	relays []relay.RelayInfo
}

func (a relayAuthority) Relays() []relay.RelayInfo { return a.relays }

func (tn *tunnelNet) authority(v uint64) relay.Authority {
	return relayAuthority{Authority: authority.Relay(tn.s.pols[v-1]), relays: tn.infos}
}

// startRelay runs relay id with the highest policy version it had.
func (tn *tunnelNet) startRelay(id string) {
	s := tn.s
	tn.mu.Lock()
	v := max(tn.version[id], 1)
	tn.mu.Unlock()
	srv, err := relay.NewServer(relay.ServerConfig{
		ID: id, Identity: tn.certs[id], Authority: tn.authority(v),
		Mesh: relay.ClientConfig{DialStream: tn.dialFrom(id)},
		ForwardHook: func(from, to string, _ []byte) {
			tn.forwards.Add(1)
			tn.mu.Lock()
			tn.pairs[id+" "+from+">"+to]++
			tn.mu.Unlock()
			if from != s.removedMember() && to != s.removedMember() {
				return
			}
			tn.mu.Lock()
			if at := tn.removedAt[id]; !at.IsZero() && time.Now().After(at) {
				tn.toRemoved[fmt.Sprintf("%s %s->%s", id, from, to)]++
			}
			tn.mu.Unlock()
		},
	})
	if err != nil {
		s.t.Fatalf("seed %d: relay %s: %v", s.seed, id, err)
	}
	r := &simRelay{id: id, srv: srv, ln: s.nw.Listen(id)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Go(func() { srv.ServeTCP(ctx, r.ln) })
	r.wg.Go(func() { srv.RunMesh(ctx) })
	tn.mu.Lock()
	tn.relays[id] = r
	tn.mu.Unlock()
}

// crashRelay stops relay id as kill -9 does: its peers see their
// connections reset.
func (tn *tunnelNet) crashRelay(id string) {
	tn.mu.Lock()
	r := tn.relays[id]
	delete(tn.relays, id)
	tn.mu.Unlock()
	if r == nil {
		return
	}
	r.ln.Close()
	tn.s.nw.Kill(id)
	r.cancel()
	r.srv.Close()
	r.wg.Wait()
}

// applyPolicy gives relay id policy version v (a member offering its
// bundles, policysync): never older than what it has.
func (tn *tunnelNet) applyPolicy(id string, v uint64) {
	tn.mu.Lock()
	if v <= tn.version[id] {
		tn.mu.Unlock()
		return
	}
	tn.version[id] = v
	r := tn.relays[id]
	tn.mu.Unlock()
	if r != nil {
		r.srv.UpdateAuthority(tn.authority(v))
	}
	if tn.s.pols[v-1].Member(tn.s.removedMember()) == nil {
		tn.mu.Lock()
		if tn.removedAt[id].IsZero() {
			tn.removedAt[id] = time.Now()
		}
		tn.mu.Unlock()
		tn.s.logf("relay %s applied policy v%d: %s removed", id, v, tn.s.removedMember())
	}
}

// dialFrom dials relay addresses from simnet host from.
func (tn *tunnelNet) dialFrom(from string) func(ctx context.Context, addr string) (net.Conn, error) {
	d := tn.s.nw.Dialer(from)
	return func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", relayName(addr))
	}
}

// overlay is member's tunnel address in policy p.
func overlay(p *policy.Policy, member string) (netip.Addr, bool) {
	m := p.Member(member)
	if m == nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(m.OverlayIP)
	return a, err == nil
}

// startHost brings node n's tunnel up (a fresh WireGuard key, as at every
// start of the appliance) and reconfigures every host's peers.
func (tn *tunnelNet) startHost(n *simNode) *simtun.Host {
	s := tn.s
	addr, _ := overlay(s.pols[0], n.member)
	client := s.cons.CAs[n.member].Issue(s.t, n.name+"-relay-client")
	var log *slog.Logger
	if testing.Verbose() && *flagLogs {
		log = slog.New(slog.NewTextHandler(tWriter{s.t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", n.name, "component", "tunnel")
	}
	h, err := simtun.New(n.member, addr, relay.ClientConfig{
		Identity:   client.TLS(),
		Relays:     tn.infos,
		DialStream: tn.dialFrom(n.name),
		NoEnvProxy: true,
	}, log, log != nil)
	if err != nil {
		s.t.Fatalf("seed %d: tunnel of %s: %v", s.seed, n.name, err)
	}
	tn.mu.Lock()
	tn.hosts[n.name] = h
	tn.mu.Unlock()
	tn.syncPeers()
	if ln, err := h.Stack.Listen(probePort); err == nil {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
	}
	return h
}

func (tn *tunnelNet) stopHost(n *simNode) {
	tn.mu.Lock()
	h := tn.hosts[n.name]
	delete(tn.hosts, n.name)
	tn.mu.Unlock()
	if h != nil {
		h.Close()
	}
	tn.syncPeers()
}

// syncPeers configures every running host's WireGuard peers: the other
// running members its own node's policy lists, with their current keys.
// This stands for the tunnel's control plane (attestations announced and
// verified, peers of removed members dropped: tunnel/internal/core).
func (tn *tunnelNet) syncPeers() {
	s := tn.s
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for _, n := range s.nodes {
		h := tn.hosts[n.name]
		w := n.watcher.Load()
		if h == nil || w == nil {
			continue
		}
		p := w.Current()
		var peers []simtun.Peer
		for _, o := range s.nodes {
			oh := tn.hosts[o.name]
			if o == n || oh == nil {
				continue
			}
			if a, ok := overlay(p, o.member); ok {
				peers = append(peers, simtun.Peer{Member: o.member, Key: oh.PublicKey(), Addr: a})
			}
		}
		if err := h.SetPeers(peers); err != nil {
			s.t.Errorf("seed %d: %s: WireGuard peers: %v", s.seed, n.name, err)
		}
	}
}

// raftEndpoints are node n's raft dialer and listener over its tunnel.
func (tn *tunnelNet) raftEndpoints(n *simNode, h *simtun.Host) (tunnelDialer, net.Listener) {
	ln, err := h.Stack.Listen(tunnelRaftPort)
	if err != nil {
		tn.s.t.Fatalf("seed %d: %s: raft listener: %v", tn.s.seed, n.name, err)
	}
	return tunnelDialer{tn: tn, h: h, from: n.name}, observedListener{Listener: ln, s: tn.s, self: n.name}
}

// tunnelDialer dials raft peers (by node name) through the tunnel.
type tunnelDialer struct {
	tn   *tunnelNet
	h    *simtun.Host
	from string
}

func (d tunnelDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var member string
	for _, o := range d.tn.s.nodes {
		if o.name == address {
			member = o.member
		}
	}
	a, ok := overlay(d.tn.s.pols[0], member)
	if !ok {
		return nil, fmt.Errorf("sim: no overlay address for %q", address)
	}
	c, err := d.h.Stack.Dial(ctx, a, tunnelRaftPort)
	if err != nil {
		return nil, err
	}
	return &observedConn{Conn: c, s: d.tn.s, from: d.from, to: address}, nil
}

// observedListener wraps accepted raft connections so that what the node
// writes is observed (ledgerSim.observe), as simnet's Observe does for the
// direct network.
type observedListener struct {
	net.Listener
	s    *ledgerSim
	self string
}

func (l observedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	peer := ""
	if a, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		if m := l.s.pols[0].MemberByAddr(a.Addr()); m != nil {
			peer = "n" + strings.TrimPrefix(m.ID, "m")
		}
	}
	return &observedConn{Conn: c, s: l.s, from: l.self, to: peer}, nil
}

// observedConn hands every raftlog frame written to ledgerSim.observe.
type observedConn struct {
	net.Conn
	s        *ledgerSim
	from, to string
	mu       sync.Mutex
	pending  []byte
}

func (c *observedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.pending = append(c.pending, p...)
	for {
		n, _ := raftSplit(c.pending)
		if n == 0 {
			break
		}
		c.s.observe(c.from, c.to, time.Now(), c.pending[:n])
		c.pending = c.pending[n:]
	}
	c.pending = slices.Clip(c.pending)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// reachable says whether node a can reach node b now: directly (simnet),
// or in the tunnel: both hosts up, each a WireGuard peer of the other (its
// policy lists the other), and a running relay both reach.
func (s *ledgerSim) reachable(a, b string) bool {
	if s.tn == nil {
		return s.nw.Cut(a, b) == 0
	}
	s.tn.mu.Lock()
	defer s.tn.mu.Unlock()
	ha, hb := s.tn.hosts[a], s.tn.hosts[b]
	if ha == nil || hb == nil || !ha.HasPeer(hb.PublicKey()) || !hb.HasPeer(ha.PublicKey()) {
		return false
	}
	for _, id := range relayIDs {
		if s.tn.relays[id] != nil && s.nw.Cut(a, id) == 0 && s.nw.Cut(b, id) == 0 {
			return true
		}
	}
	return false
}

// removedMember is the member version 3 takes out of the consenters (and,
// in the tunnel simulation, version 4 out of the consortium).
func (s *ledgerSim) removedMember() string { return fmt.Sprintf("m%d", s.removedID) }

// relayFaults hits the relays and the members' links to them for d of
// virtual time, beside injectFaults (so a relay fault may overlap a node
// crash, a partition or the other relay's fault), from its own seeded
// stream.
func (s *ledgerSim) relayFaults(ctx context.Context, d time.Duration) {
	r := rand.New(rand.NewPCG(s.seed, 0x7e1a75))
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		time.Sleep(time.Duration(500+r.IntN(3000)) * time.Millisecond)
		s.tunnelFault(r, r.IntN(len(s.nodes)), time.Duration(300+r.IntN(5000))*time.Millisecond, -1)
	}
}

// tunnelFault is one fault of the tunnel layer: kind 0 a relay crash, 1 a
// silent relay, 2 a member's link to one relay cut; -1 one chosen by r.
func (s *ledgerSim) tunnelFault(r interface{ IntN(int) int }, x int, hold time.Duration, kind int) {
	tn := s.tn
	name := s.nodes[x].name
	if kind < 0 {
		kind = r.IntN(3)
	}
	switch kind {
	case 0: // a relay crashes (kill -9) and restarts
		id := relayIDs[r.IntN(len(relayIDs))]
		s.logf("crash relay %s for %v", id, hold)
		tn.crashRelay(id)
		time.Sleep(hold)
		tn.startRelay(id)
		s.logf("restarted relay %s", id)
	case 1: // a relay vanishes (power cut, silent path) and comes back
		id := relayIDs[r.IntN(len(relayIDs))]
		s.logf("relay %s silent for %v", id, hold)
		for _, o := range append(slices.Clone(relayIDs), s.nodeNames()...) {
			if o != id {
				s.nw.Partition(id, o, simnet.Silent)
			}
		}
		time.Sleep(hold)
		for _, o := range append(slices.Clone(relayIDs), s.nodeNames()...) {
			s.nw.Heal(id, o)
		}
		s.logf("relay %s back", id)
	default: // a member loses one relay
		id := relayIDs[r.IntN(len(relayIDs))]
		m := []simnet.Mode{simnet.Reset, simnet.Silent}[r.IntN(2)]
		s.logf("cut %s-%s (%v) for %v", name, id, m, hold)
		s.nw.Partition(name, id, m)
		time.Sleep(hold)
		s.nw.Heal(name, id)
	}
}

func (s *ledgerSim) nodeNames() []string {
	var out []string
	for _, n := range s.nodes {
		out = append(out, n.name)
	}
	return out
}

// linkPeers are what node x is partitioned from to isolate it: the other
// nodes, or in the tunnel both relays.
func (s *ledgerSim) linkPeers(x int) []string {
	if s.tn != nil {
		return relayIDs
	}
	var out []string
	for y, n := range s.nodes {
		if y != x {
			out = append(out, n.name)
		}
	}
	return out
}

// checkTunnel checks the tunnel invariants at the end of a seed.
func (s *ledgerSim) checkTunnel() string {
	tn := s.tn
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for _, id := range relayIDs {
		if tn.removedAt[id].IsZero() {
			s.t.Errorf("seed %d: relay %s never applied the policy version removing %s", s.seed, id, s.removedMember())
		}
	}
	if len(tn.toRemoved) > 0 {
		s.t.Errorf("seed %d: relays forwarded to or from %s after applying its removal: %v", s.seed, s.removedMember(), tn.toRemoved)
	}
	var drops []string
	for _, id := range relayIDs {
		if r := tn.relays[id]; r != nil {
			drops = append(drops, fmt.Sprintf("%s %v", id, r.srv.Drops()))
		}
	}
	return fmt.Sprintf("relays forwarded %d packets, drops %v", tn.forwards.Load(), drops)
}

// policyApplied follows node n's policy: its tunnel's peers, and the
// relays, to which its appliance offers the bundles it applied.
func (tn *tunnelNet) policyApplied(n *simNode) {
	w := n.watcher.Load()
	if w == nil {
		return
	}
	v := w.Current().Version()
	for _, id := range relayIDs {
		tn.applyPolicy(id, v)
	}
	tn.syncPeers()
}

// TestConsortiumSim is TestLedgerSim with raft through the members'
// tunnels and two relays (see tunnelNet), and relay faults.
func TestConsortiumSim(t *testing.T) { runSeeds(t, "TestConsortiumSim", true) }

// memberGone says whether err refused an envelope of n's member because
// the policy removed the member from the consortium (the tunnel
// simulation's version 4): its clients stop, as a removed member's would.
func (s *ledgerSim) memberGone(n *simNode, err error) bool {
	if !s.tunnel || n.member != s.removedMember() || !errors.Is(err, orderer.ErrForbidden) {
		return false
	}
	for _, o := range s.nodes {
		if w := o.watcher.Load(); w != nil && w.Current().Member(n.member) == nil {
			return true
		}
	}
	return false
}

// probePort is an echo service on every host, for dump's probes.
const probePort = 9

// probe dials b's echo service from a and times a round trip.
func probe(a, b *simtun.Host) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	c, err := a.Stack.Dial(ctx, b.Addr, probePort)
	if err != nil {
		return fmt.Sprintf("%s>%s: %v", a.Member, b.Member, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Sprintf("%s>%s: %v", a.Member, b.Member, err)
	}
	return fmt.Sprintf("%s>%s: %v", a.Member, b.Member, time.Since(start))
}

// dump logs the tunnel's state: each host's relay links, drops and
// WireGuard peers, each relay's members and drops.
func (tn *tunnelNet) dump() {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for name, h := range tn.hosts {
		var rs []string
		for _, st := range h.Relay.Status() {
			rs = append(rs, fmt.Sprintf("%s:%s active=%v healthy=%v in=%d out=%d (%s)", st.ID, st.State, st.Active, st.Healthy, st.BytesIn, st.BytesOut, st.LastError))
		}
		tn.s.logf("host %s: relays %v drops %v tun_dropped %d delivered %d wg: %s; streams: %s", name, rs, h.Relay.Drops(), h.TUNDropped.Load(), h.Delivered.Load(), h.WGSummary(), h.Stack.Stats())
	}
	for id, r := range tn.relays {
		tn.s.logf("relay %s: members %v drops %v", id, r.srv.Members(), r.srv.Drops())
	}
	tn.s.logf("forwarded by relay and pair: %v", tn.pairs)
	var hs []*simtun.Host
	for _, n := range tn.s.nodes {
		if h := tn.hosts[n.name]; h != nil {
			hs = append(hs, h)
		}
	}
	tn.mu.Unlock()
	var probes []string
	for _, a := range hs {
		for _, b := range hs {
			if a != b {
				probes = append(probes, probe(a, b))
			}
		}
	}
	tn.mu.Lock()
	tn.s.logf("probes: %v", probes)
}

// Package tunnel gives each member a userspace WireGuard interface
// (wireguard-go over gVisor netstack: no TUN device, no root) whose packets
// travel over a PacketTransport (the relay client) addressed by member id.
//
// Peers are configured only from WireGuard key attestations signed by member
// identities the current Authority (policy) accepts; keys rotate without
// dropping TCP connections; Dial/Listen give other packages TCP by member id
// with the policy ACL enforced on both ends; service forwards bridge LAN TCP
// services through the tunnel.
package tunnel

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/memberd/memberd/tunnel/internal/core"
)

var (
	// ErrNotMember: the member is not in the current policy (or has no overlay address).
	ErrNotMember = errors.New("not a member in the current policy")
	// ErrDenied: the policy ACL does not allow this connection.
	ErrDenied = errors.New("connection not allowed by the policy ACL")
	// ErrNoPeer: no valid attestation from that member has arrived yet.
	ErrNoPeer = errors.New("no WireGuard peer for member yet (key attestations not exchanged: is the member online and reachable through a relay?)")
	// ErrClosed: the Device is closed.
	ErrClosed = errors.New("tunnel closed")
)

// Stats are counters for status and metrics.
type Stats struct {
	AttestationsAccepted  uint64
	AttestationsRefused   uint64 // by reason in the log (refused_reason)
	ControlDropped        uint64 // control queue full, malformed, or a request not answered (rate)
	ACLDenied             uint64 // dials and accepts refused by the ACL
	Rotations             uint64
	IdentityChanges       uint64 // attestations re-signed by SetIdentity
	PacketsIn, PacketsOut uint64 // WireGuard packets over the transport
	BytesIn, BytesOut     uint64
	// PeerSwitchesOnFirstPacket counts peers moved to their new key by
	// the first packet of the new session (promote.go); PeerSwitchWaits
	// the packets that went on without waiting for that (switchWait).
	PeerSwitchesOnFirstPacket, PeerSwitchWaits uint64
	// SwitchPauseTimeouts counts own key switches after which some peer
	// did not answer the new handshake within switchPauseMax (pause.go).
	SwitchPauseTimeouts uint64
}

// PeerStatus describes the WireGuard peer of one member.
type PeerStatus struct {
	Member     string
	Addr       netip.Addr
	PublicKey  Key       // active key
	Expiry     time.Time // of the active attestation
	PendingKey Key       // announced next key, zero if none
	// LastHandshake is when the last WireGuard handshake with the active
	// key completed (zero: none yet).
	LastHandshake time.Time
	// Certificate is the identity certificate that signed the active
	// attestation (the peer's current member identity).
	Certificate *x509.Certificate
}

// Device is one member's tunnel endpoint: the driver of the pure peer and
// rotation core (internal/core). It feeds the core the control messages,
// timers and handshakes it sees and applies what the core returns through
// wireguard-go's IpcSet, the Bind and the pausable netstack interface.
//
// Its state is grouped by what guards it; locks are taken in the order
// id.mu, peers.mu, conns.mu, and none is held while sending.
type Device struct {
	cfg  Config // immutable after New (defaults applied)
	log  *slog.Logger
	now  func() time.Time
	addr netip.Addr
	mtu  atomic.Int64                // follows the transport's path unless Config.MTU is set (mtu.go)
	auth atomic.Pointer[memberIndex] // the current policy; stored under conns.mu (see SetAuthority)

	io    deviceIO  // the driven parts (see deviceIO)
	run   lifecycle // Run, Ready and Close
	ev    events    // wake-ups of the driver loops
	peers peerTable // the core: keys, peers, rotation
	conns connTable // connections and listeners inside the tunnel
	id    signing   // the member identity that signs attestations
	fwd   forwards  // forwards and member addresses (Run)
	stats counters
}

// deviceIO are the driven parts: tr and bind are set in New, wg, tun and
// tnet by Run (see lifecycle.wg); read-only after.
type deviceIO struct {
	tr   PacketTransport
	bind *Bind
	wg   *device.Device
	tun  *pausableTUN // netstack's interface, as WireGuard reads it
	tnet *netstack.Net
}

// lifecycle is Run and Close. mu guards started, closed, ctx, eg and
// cancel; the channels are made in New.
type lifecycle struct {
	mu      sync.Mutex
	started bool               // Run was called
	closed  bool               // Close was called
	ctx     context.Context    // Run's, while it runs (nil before): work started later (member addresses)
	eg      *errgroup.Group    // Run's goroutines (nil before Run)
	cancel  context.CancelFunc // ends Run (nil before Run)
	// wg is set once Run has made the WireGuard device and netstack
	// (deviceIO's wg, tun and tnet are set before); after Store(true)
	// they are read-only. Stored under peers.mu, so that applyLocked sees
	// either no device or one configured with the core's key.
	wg     atomic.Bool
	up     chan struct{} // closed by Run once the device is up: Ready
	done   chan struct{} // closed by Close (also when Run returns)
	exited chan struct{} // closed when Run has torn down what it started

	closeOnce  sync.Once
	closeErr   error
	registered bool // metrics registered by Run; Run's goroutine, then Close
}

// events wake the driver loops; the channels are made in New.
type events struct {
	ctl      chan ctlPacket // control packets from the Bind (controlLoop)
	ack      chan struct{}  // an ack arrived (Rotate)
	promote  chan struct{}  // a member switched keys (promoteLoop)
	switches chan switchReq // what the Bind sees of a peer's key switch (promoteLoop)
	msgID    atomic.Uint32  // control message ids
}

// peerTable is the peer and rotation core. mu guards core and changed and
// is held while applying the core's output to WireGuard, so that
// configuration changes reach WireGuard in the core's order.
type peerTable struct {
	mu      sync.Mutex
	core    *core.Core
	changed chan struct{} // closed and replaced on every peer change
}

// connTable tracks what Close and member removal close, and who wants to
// hear of a rekeyed member (OnRekeyed). mu guards all.
type connTable struct {
	mu        sync.Mutex
	byMember  map[string]map[*Conn]struct{}
	listeners map[*Listener]struct{}
	rekeyed   map[*func(member string)]struct{}
	closed    bool
}

// signing is the member identity. mu is held across signing (identity.go).
type signing struct {
	mu  sync.Mutex
	cur identity
}

// forwards are the configured forwards' addresses and the member
// addresses (memberaddrs.go).
type forwards struct {
	addrs  []net.Addr // set by Run before Ready, then read-only
	maddrs memberAddrs
}

// counters are the Stats and metrics, updated atomically.
type counters struct {
	attAccepted, attRefused, ctlDropped, aclDenied, rotations, identityChanges atomic.Uint64
	switchesOnFirstPacket, switchPauseTimeouts                                 atomic.Uint64
	m                                                                          metrics
}

type keyState struct {
	priv Key
	att  *Attestation
	raw  []byte
}

// own is ks as the core holds it.
func (ks *keyState) own() core.Own {
	return core.Own{Private: core.Key(ks.priv), Public: core.Key(ks.att.PublicKey), Raw: ks.raw}
}

type ctlPacket struct {
	sender string
	pkt    []byte
}

// New checks cfg and prepares the Device: it makes the first WireGuard key
// and signs its attestation with cfg.Signer (so that an unusable identity
// is an error here), but opens nothing and starts no goroutine. Run brings
// the device up; Close releases it (and cfg.Transport), with or without Run.
func New(cfg Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	auth := newMemberIndex(cfg.Authority)
	addr, ok := auth.byID[cfg.Member]
	if !ok || !addr.IsValid() {
		return nil, fmt.Errorf("%w: this appliance's member %q has no overlay address in the policy", ErrNotMember, cfg.Member)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = mtuFor(cfg.Transport.MaxPacketSize())
		if mtu < MinMTU {
			return nil, fmt.Errorf("%w: transport packet limit %d leaves MTU %d < %d", ErrConfig, cfg.Transport.MaxPacketSize(), mtu, MinMTU)
		}
	}
	d := &Device{cfg: cfg, log: cfg.Logger, now: cfg.Now, addr: addr} // the caller names the member, once
	d.auth.Store(auth)
	d.io.tr = cfg.Transport
	d.ev = events{ctl: make(chan ctlPacket, 256), ack: make(chan struct{}, 1), promote: make(chan struct{}, 1), switches: make(chan switchReq)}
	d.conns.byMember, d.conns.listeners = map[string]map[*Conn]struct{}{}, map[*Listener]struct{}{}
	d.conns.rekeyed = map[*func(string)]struct{}{}
	d.run.up, d.run.done, d.run.exited = make(chan struct{}), make(chan struct{}), make(chan struct{})
	d.id.cur = identity{signer: cfg.Signer, chain: cfg.Chain}
	d.id.mu.Lock()
	ks, err := d.newKeyLocked()
	d.id.mu.Unlock()
	if err != nil {
		return nil, err
	}
	d.peers.changed = make(chan struct{})
	d.peers.core = core.New(core.Config{
		Member: cfg.Member, Keepalive: cfg.Keepalive,
		RotationAckTimeout: cfg.RotationAckTimeout, RequestInterval: cfg.RequestInterval,
	}, ks.own(), auth.byID)
	d.mtu.Store(int64(mtu))
	d.io.bind = newBind(cfg.Transport, queueControl(d.ev.ctl, &d.stats), d.log, d.ev.switches)
	return d, nil
}

// ErrNotRunning: the call needs the device up (Run, then Ready).
var ErrNotRunning = errors.New("tunnel not running: call Run and wait for Ready")

// Run brings the WireGuard device up over cfg.Transport, announces this
// member's key to every member, opens the configured forwards, member
// addresses and services, and runs the background work (key rotation,
// periodic announcements, expiry, MTU) until ctx ends or Close is called.
// Ready is closed once all that is up. When Run returns the Device is
// closed (as by Close); the error is why it could not start, or a failure
// met while stopping. Run may be called once.
func (d *Device) Run(ctx context.Context) error {
	d.run.mu.Lock()
	if d.run.closed {
		d.run.mu.Unlock()
		return ErrClosed
	}
	if d.run.started {
		d.run.mu.Unlock()
		return errors.New("tunnel: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.run.started, d.run.ctx, d.run.eg, d.run.cancel = true, ctx, new(errgroup.Group), cancel
	d.run.mu.Unlock()
	defer close(d.run.exited)
	if err := d.start(ctx); err != nil {
		cancel()
		d.shutdown()
		return err
	}
	close(d.run.up)
	<-ctx.Done()
	return d.shutdown()
}

// Ready is closed once Run has brought the device up: Dial, Listen, Ping,
// ForwardAddrs and MemberAddrs answer from then on. It is never closed if
// Run fails to start.
func (d *Device) Ready() <-chan struct{} { return d.run.up }

// isUp reports whether Ready is closed.
func (d *Device) isUp() bool {
	select {
	case <-d.run.up:
		return true
	default:
		return false
	}
}

// waitUp waits for Ready, Close or the end of ctx.
func (d *Device) waitUp(ctx context.Context) error {
	select {
	case <-d.run.up:
		return nil
	case <-d.run.done:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotRunning, ctx.Err())
	}
}

// start is Run's start-up, on Run's goroutine.
func (d *Device) start(ctx context.Context) error {
	mtu := d.MTU()
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{d.addr}, nil, mtu)
	if err != nil {
		return fmt.Errorf("create netstack interface %s mtu %d: %w", d.addr, mtu, err)
	}
	if err := useSACKRecovery(tnet); err != nil {
		d.log.Warn("cannot switch tunnel TCP to SACK loss recovery; keeping gVisor's RACK, which can crawl for seconds after a burst loss", "err", err)
	}
	tun := newPausableTUN(tdev, func() { d.stats.switchPauseTimeouts.Add(1) })
	if s, err := netstackOf(tnet); err == nil {
		tun.beforeClose = func() { quiesceTCP(s, 2*time.Second, d.log.Warn) }
	}
	wg := device.NewDevice(tun, d.io.bind, wgLogger(d.log))
	// Under peers.mu: the key is the core's now (a pre-Run SetIdentity may
	// have re-signed it; the key itself changes only in Run).
	d.peers.mu.Lock()
	err = wg.IpcSet("private_key=" + Key(d.peers.core.Self().Private).String() + "\n")
	if err == nil {
		if err = wg.Up(); err != nil {
			err = fmt.Errorf("bring up WireGuard device: %w", err)
		}
	} else {
		err = fmt.Errorf("configure WireGuard key: %w", err)
	}
	if err != nil {
		d.peers.mu.Unlock()
		wg.Close()
		return err
	}
	d.io.tnet, d.io.tun, d.io.wg = tnet, tun, wg
	d.run.wg.Store(true)
	d.peers.mu.Unlock()
	if d.cfg.Registerer != nil {
		if err := d.cfg.Registerer.Register(collector{d}); err != nil {
			return fmt.Errorf("register tunnel metrics: %w", err)
		}
		d.run.registered = true
	}
	eg := d.run.eg
	eg.Go(func() error { return d.controlLoop(ctx) })
	eg.Go(func() error { return d.timerLoop(ctx) })
	eg.Go(func() error { return d.rotateLoop(ctx) })
	eg.Go(func() error { return d.promoteLoop(ctx) })
	eg.Go(func() error { return d.mtuLoop(ctx) })
	if err := d.startForwards(ctx, eg); err != nil {
		return err
	}
	d.announceAll(true)
	d.log.Info("tunnel up", "overlay_addr", d.addr, "mtu", mtu, "public_key", d.PublicKey().String())
	return nil
}

func wgLogger(l *slog.Logger) *device.Logger {
	l = l.With("sub", "wireguard") // the caller named the component
	return &device.Logger{
		Verbosef: func(f string, a ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(f, a...))
			}
		},
		Errorf: func(f string, a ...any) { l.Info(fmt.Sprintf(f, a...)) },
	}
}

// newKeyLocked makes a WireGuard key and its attestation signed by the
// current identity. d.id.mu held.
func (d *Device) newKeyLocked() (*keyState, error) {
	priv, err := NewPrivateKey()
	if err != nil {
		return nil, err
	}
	return d.signLocked(priv)
}

// Addr is this member's overlay address.
func (d *Device) Addr() netip.Addr { return d.addr }

// MTU is the tunnel MTU in use (new connections; see mtu.go).
func (d *Device) MTU() int { return int(d.mtu.Load()) }

// PublicKey is the active WireGuard public key.
func (d *Device) PublicKey() Key {
	d.peers.mu.Lock()
	defer d.peers.mu.Unlock()
	return Key(d.peers.core.Self().Public)
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	return Stats{
		AttestationsAccepted: d.stats.attAccepted.Load(),
		AttestationsRefused:  d.stats.attRefused.Load(),
		ControlDropped:       d.stats.ctlDropped.Load(),
		ACLDenied:            d.stats.aclDenied.Load(),
		Rotations:            d.stats.rotations.Load(),
		IdentityChanges:      d.stats.identityChanges.Load(),
		PacketsIn:            d.io.bind.pktIn.Load(),
		PacketsOut:           d.io.bind.pktOut.Load(),
		BytesIn:              d.io.bind.bytesIn.Load(),
		BytesOut:             d.io.bind.bytesOut.Load(),

		PeerSwitchesOnFirstPacket: d.stats.switchesOnFirstPacket.Load(),
		PeerSwitchWaits:           d.io.bind.switchMissed.Load(),
		SwitchPauseTimeouts:       d.stats.switchPauseTimeouts.Load(),
	}
}

// Peers lists the configured peers, sorted by member.
func (d *Device) Peers() []PeerStatus {
	hs, _ := d.handshakeTimes() // before peers.mu: IpcGet takes WireGuard's locks
	d.peers.mu.Lock()
	defer d.peers.mu.Unlock()
	var out []PeerStatus
	for _, p := range d.peers.core.Peers() {
		ps := PeerStatus{Member: p.Member, Addr: p.Addr}
		if a := attOf(p.Active); a != nil {
			ps.PublicKey, ps.Expiry = a.PublicKey, a.Expiry()
			ps.LastHandshake = hs[a.PublicKey]
			ps.Certificate = a.Chain[0]
		}
		if a := attOf(p.Pending); a != nil {
			ps.PendingKey = a.PublicKey
		}
		out = append(out, ps)
	}
	return out
}

// Close stops everything: Run, forwards, listeners and connections inside
// the tunnel, the WireGuard device, and the transport. It is idempotent,
// and may be called before Run, or without it.
func (d *Device) Close() error {
	d.run.mu.Lock()
	d.run.closed = true
	started, cancel := d.run.started, d.run.cancel
	d.run.mu.Unlock()
	if !started {
		return d.shutdown()
	}
	cancel()
	<-d.run.exited // Run's shutdown
	return d.shutdown()
}

// shutdown is Close's work, done once: by Run when it returns, else by
// Close.
func (d *Device) shutdown() error {
	d.run.closeOnce.Do(func() {
		close(d.run.done)
		d.conns.mu.Lock()
		d.conns.closed = true
		ls := make([]*Listener, 0, len(d.conns.listeners))
		for l := range d.conns.listeners {
			ls = append(ls, l)
		}
		var cs []*Conn
		for _, m := range d.conns.byMember {
			for c := range m {
				cs = append(cs, c)
			}
		}
		d.conns.mu.Unlock()
		d.run.mu.Lock()
		if d.run.cancel != nil {
			d.run.cancel()
		}
		eg := d.run.eg
		d.run.mu.Unlock()
		if d.run.registered {
			d.cfg.Registerer.Unregister(collector{d})
		}
		for _, l := range ls {
			l.Close()
		}
		for _, c := range cs {
			c.Close()
		}
		if d.run.wg.Load() {
			d.io.wg.Close() // closes the bind, which closes the transport
		}
		d.run.closeErr = d.io.bind.Close()
		if err := d.io.tr.Close(); err != nil && d.run.closeErr == nil && !isClosedErr(err) {
			d.run.closeErr = err
		}
		if eg != nil {
			if err := eg.Wait(); err != nil && !errors.Is(err, context.Canceled) && d.run.closeErr == nil {
				d.run.closeErr = err
			}
		}
	})
	return d.run.closeErr
}

// retryFirst is how soon announcements are resent to members whose peer is
// not ready yet; the interval doubles up to AnnounceEvery while some stay
// missing although the transport took the announcements, and starts over
// once none is missing or none could be sent (no relay connected yet: the
// first announcements once one is must not wait a doubled interval).
const retryFirst = time.Second

// timerLoop announces periodically and expires attestations. Besides the
// AnnounceEvery round it resends, with backoff, to members not ready yet: an
// announcement sent while the other member was not yet attached to a relay
// is dropped there, and waiting a whole AnnounceEvery for the next one would
// keep the pair apart that long.
func (d *Device) timerLoop(ctx context.Context) error {
	t := time.NewTicker(d.cfg.AnnounceEvery)
	defer t.Stop()
	fast := time.NewTicker(250 * time.Millisecond)
	defer fast.Stop()
	retryEvery := retryFirst
	retry := time.NewTimer(retryEvery)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-fast.C:
			d.step(core.Tick{})
		case <-t.C:
			d.step(core.Expire{})
			d.announceAll(false)
		case <-retry.C:
			if missing, sent := d.announceMissing(); missing > 0 && sent > 0 {
				retryEvery = min(2*retryEvery, d.cfg.AnnounceEvery)
			} else {
				retryEvery = retryFirst
			}
			retry.Reset(retryEvery)
		}
	}
}

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

// Device is one member's tunnel endpoint.
type Device struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	tr   PacketTransport
	bind *Bind
	wg   *device.Device
	tun  *pausableTUN // netstack's interface, as WireGuard reads it
	tnet *netstack.Net
	addr netip.Addr
	mtu  atomic.Int64 // follows the transport's path unless Config.MTU is set (mtu.go)

	fwdAddrs []net.Addr // set in New, then read-only
	maddrs   memberAddrs

	ctx    context.Context
	cancel context.CancelFunc
	eg     *errgroup.Group

	ctlCh chan ctlPacket
	ackCh chan struct{}
	// promoteCh wakes promoteLoop when a member switched keys.
	promoteCh chan struct{}
	// switchCh hands promoteLoop what the Bind sees of a peer's key
	// switch (promote.go); armed are the sessions it waits for.
	switchCh chan switchReq
	armed    armedSessions
	msgID    atomic.Uint32

	mu        sync.Mutex
	auth      *memberIndex
	self      keyState // active key
	next      *keyState
	acks      map[string]bool
	peers     map[string]*peerState
	changed   chan struct{} // closed and replaced on every peer change
	kaDue     map[Key]time.Time
	retiring  map[Key]time.Time // old keys' peers to remove then (promote.go)
	requests  requestLimiter    // answers to attestation requests, per member
	conns     map[string]map[*Conn]struct{}
	listeners map[*Listener]struct{}
	closed    bool

	closeOnce sync.Once
	closeErr  error

	idMu sync.Mutex // held across signing; taken before mu (identity.go)
	id   identity

	attAccepted, attRefused, ctlDropped, aclDenied, rotations, identityChanges atomic.Uint64
	switchesOnFirstPacket, switchMissed, switchPauseTimeouts                   atomic.Uint64
	m                                                                          metrics
}

type keyState struct {
	priv Key
	att  *Attestation
	raw  []byte
}

type ctlPacket struct {
	sender string
	pkt    []byte
}

// New builds the WireGuard device over cfg.Transport, brings it up, announces
// this member's key to every member and starts the background work (key
// rotation, periodic announcements, expiry, configured forwards and services).
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
	d := &Device{
		cfg: cfg, log: cfg.Logger, now: cfg.Now, tr: cfg.Transport, // the caller names the member, once
		addr: addr, auth: auth,
		ctlCh: make(chan ctlPacket, 256), ackCh: make(chan struct{}, 1), promoteCh: make(chan struct{}, 1),
		switchCh: make(chan switchReq),
		peers:    map[string]*peerState{}, changed: make(chan struct{}), kaDue: map[Key]time.Time{},
		retiring: map[Key]time.Time{},
		conns:    map[string]map[*Conn]struct{}{}, listeners: map[*Listener]struct{}{},
		requests: requestLimiter{every: cfg.RequestInterval},
		id:       identity{signer: cfg.Signer, chain: cfg.Chain},
	}
	d.idMu.Lock()
	ks, err := d.newKeyLocked()
	d.idMu.Unlock()
	if err != nil {
		return nil, err
	}
	d.self = *ks
	d.mtu.Store(int64(mtu))
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{addr}, nil, mtu)
	if err != nil {
		return nil, fmt.Errorf("create netstack interface %s mtu %d: %w", addr, mtu, err)
	}
	d.tnet = tnet
	if err := useSACKRecovery(tnet); err != nil {
		d.log.Warn("cannot switch tunnel TCP to SACK loss recovery; keeping gVisor's RACK, which can crawl for seconds after a burst loss", "err", err)
	}
	d.bind = NewBind(cfg.Transport, d.onControl, d.log)
	d.bind.watch = d
	d.tun = newPausableTUN(tdev, func() { d.switchPauseTimeouts.Add(1) })
	d.wg = device.NewDevice(d.tun, d.bind, wgLogger(d.log))
	if err := d.wg.IpcSet("private_key=" + d.self.priv.String() + "\n"); err != nil {
		d.wg.Close()
		return nil, fmt.Errorf("configure WireGuard key: %w", err)
	}
	if err := d.wg.Up(); err != nil {
		d.wg.Close()
		return nil, fmt.Errorf("bring up WireGuard device: %w", err)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.eg, _ = errgroup.WithContext(d.ctx)
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(collector{d}); err != nil {
			d.wg.Close()
			return nil, fmt.Errorf("register tunnel metrics: %w", err)
		}
	}
	d.eg.Go(d.controlLoop)
	d.eg.Go(d.timerLoop)
	d.eg.Go(d.rotateLoop)
	d.eg.Go(d.promoteLoop)
	d.eg.Go(d.mtuLoop)
	if err := d.startForwards(); err != nil {
		d.Close()
		return nil, err
	}
	d.announceAll(true)
	d.log.Info("tunnel up", "overlay_addr", addr, "mtu", mtu, "public_key", d.self.att.PublicKey.String())
	return d, nil
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
// current identity. d.idMu held.
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
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.self.att.PublicKey
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	return Stats{
		AttestationsAccepted: d.attAccepted.Load(),
		AttestationsRefused:  d.attRefused.Load(),
		ControlDropped:       d.ctlDropped.Load(),
		ACLDenied:            d.aclDenied.Load(),
		Rotations:            d.rotations.Load(),
		IdentityChanges:      d.identityChanges.Load(),
		PacketsIn:            d.bind.pktIn.Load(),
		PacketsOut:           d.bind.pktOut.Load(),
		BytesIn:              d.bind.bytesIn.Load(),
		BytesOut:             d.bind.bytesOut.Load(),

		PeerSwitchesOnFirstPacket: d.switchesOnFirstPacket.Load(),
		PeerSwitchWaits:           d.switchMissed.Load(),
		SwitchPauseTimeouts:       d.switchPauseTimeouts.Load(),
	}
}

// Peers lists the configured peers, sorted by member.
func (d *Device) Peers() []PeerStatus {
	hs, _ := d.handshakeTimes() // before mu: IpcGet takes WireGuard's locks
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []PeerStatus
	for m, p := range d.peers {
		ps := PeerStatus{Member: m, Addr: p.addr}
		if p.active != nil {
			ps.PublicKey, ps.Expiry = p.active.PublicKey, p.active.Expiry()
			ps.LastHandshake = hs[p.active.PublicKey]
			ps.Certificate = p.active.Chain[0]
		}
		if p.pending != nil {
			ps.PendingKey = p.pending.PublicKey
		}
		out = append(out, ps)
	}
	sortPeers(out)
	return out
}

// Close stops everything: forwards, listeners and connections inside the
// tunnel, the WireGuard device, and the transport. It is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		ls := make([]*Listener, 0, len(d.listeners))
		for l := range d.listeners {
			ls = append(ls, l)
		}
		var cs []*Conn
		for _, m := range d.conns {
			for c := range m {
				cs = append(cs, c)
			}
		}
		d.mu.Unlock()
		d.cancel()
		if d.cfg.Registerer != nil {
			d.cfg.Registerer.Unregister(collector{d})
		}
		for _, l := range ls {
			l.Close()
		}
		for _, c := range cs {
			c.Close()
		}
		d.wg.Close() // closes the bind, which closes the transport
		d.closeErr = d.bind.Close()
		if err := d.tr.Close(); err != nil && d.closeErr == nil && !isClosedErr(err) {
			d.closeErr = err
		}
		if err := d.eg.Wait(); err != nil && !errors.Is(err, context.Canceled) && d.closeErr == nil {
			d.closeErr = err
		}
	})
	return d.closeErr
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
func (d *Device) timerLoop() error {
	t := time.NewTicker(d.cfg.AnnounceEvery)
	defer t.Stop()
	fast := time.NewTicker(250 * time.Millisecond)
	defer fast.Stop()
	retryEvery := retryFirst
	retry := time.NewTimer(retryEvery)
	defer retry.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return nil
		case <-fast.C:
			d.enableDueKeepalives(d.now())
			d.retireDue(time.Now())
		case <-t.C:
			d.expire()
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

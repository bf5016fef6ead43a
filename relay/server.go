package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/relay/wire"
)

// ServerConfig configures a relay Server. The zero value of every optional
// field means the default written next to it.
type ServerConfig struct {
	// ID is this relay's id in the policy's relay list (required).
	ID string
	// Identity is the relay's TLS certificate; its PrivateKey is a
	// crypto.Signer (an HSM key in production). Required. Its public key
	// must match this relay's pin in the policy for mesh peers to accept it.
	Identity tls.Certificate
	// Authority is the initial policy snapshot (required); replace it with
	// UpdateAuthority.
	Authority Authority
	// Logger receives operational logs; nil discards them. The server adds
	// no key naming itself: the caller names the relay (cmd: component and
	// relay), so that each key appears once per line.
	Logger *slog.Logger
	// Registerer receives the relay's metrics; nil registers none.
	Registerer prometheus.Registerer
	// RateBytesPerSec limits each member's ingress payload bytes per second,
	// summed over its connections. Default 12_500_000 (100 Mbit/s); negative
	// means unlimited.
	RateBytesPerSec float64
	// RateBurstBytes is the token bucket size. Default 1 MiB; at least
	// MinRateBurstBytes (Validate), else a full-size packet never fits.
	RateBurstBytes float64
	// QueueLen bounds each connection's send queue in packets; beyond it
	// packets are dropped (reason queue_full), the newest of the source
	// member with most packets queued first (see fairQueue). Default 512.
	QueueLen int
	// MaxConnsPerMember bounds connections per member; a new one beyond the
	// limit closes the oldest. Default 4.
	MaxConnsPerMember int
	// HandshakeTimeout bounds a connection from accept to the end of the
	// HELLO exchange (TLS handshake included); on QUIC, quic-go's own
	// handshake timeout is set to it too. Default DefaultHandshakeTimeout
	// (3s).
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds connections in their handshake (accepted, HELLO
	// not yet exchanged) over all sources; beyond it new ones are closed
	// at once (TCP) or refused (QUIC CONNECTION_REFUSED), counted as
	// over_limit_total. Past half of it, QUIC clients must prove their
	// address with a Retry first. Default DefaultMaxHandshakes (256).
	MaxHandshakes int
	// MaxHandshakesPerSource bounds connections in their handshake from
	// one IPv4 address or IPv6 /64 (over_limit_source). Default
	// DefaultMaxHandshakesPerSource (16); at most MaxHandshakes.
	MaxHandshakesPerSource int
	// IdleTimeout closes an admitted connection (member or relay peer, TLS
	// or QUIC) on which no frame at all arrived for this long, counted as
	// memberd_relay_closed_connections_total{reason="idle"} and logged.
	// Clients ping every PingInterval (50ms by default), so only a peer
	// that went silent is cut: a TLS connection that passed the handshake
	// and then sent nothing was otherwise held for ever (QUIC has its own
	// idle timeout, but quic-go's keepalives hold a silent peer there
	// too). Default DefaultIdleTimeout (30s, QUIC's MaxIdleTimeout);
	// negative disables it.
	IdleTimeout time.Duration
	// ForwardHook, when set, sees every payload the relay forwards (from,
	// to, payload) before it is queued. It must not retain or modify
	// payload. For tests and packet capture.
	ForwardHook func(from, to string, payload []byte)
	// Policy, when set, receives the signed policy bundles members offer
	// (see policysync.go); nil ignores them (counted as "ignored").
	Policy PolicyStore
	// MaxPolicyBytes bounds the size of a bundle a member may offer;
	// larger ones are refused on their first chunk. Default and maximum
	// wire.MaxPolicySize (4 MiB).
	MaxPolicyBytes int
	// PolicyOfferEvery bounds how often one connection may have a bundle
	// received and verified: a burst of 4, then one per interval (versions
	// the relay has are skipped for free and not counted). Default 10s.
	PolicyOfferEvery time.Duration
	// Mesh configures how RunMesh dials the other relays (QUIC timeout,
	// proxy, keepalives); Identity and Relays are filled in by the server.
	Mesh ClientConfig
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Validate checks the configuration.
func (c *ServerConfig) Validate() error {
	if !wire.ValidID(c.ID) {
		return fmt.Errorf("%w: relay id %q must be 1..%d bytes", ErrConfig, c.ID, wire.MaxIDLen)
	}
	if len(c.Identity.Certificate) == 0 || c.Identity.PrivateKey == nil {
		return fmt.Errorf("%w: relay %q has no identity certificate and key", ErrConfig, c.ID)
	}
	if c.Authority == nil {
		return fmt.Errorf("%w: relay %q has no authority (policy snapshot)", ErrConfig, c.ID)
	}
	if c.QueueLen < 0 || c.MaxConnsPerMember < 0 {
		return fmt.Errorf("%w: negative queue_len or max_conns_per_member", ErrConfig)
	}
	if c.RateBurstBytes != 0 && !(c.RateBurstBytes >= MinRateBurstBytes) {
		return fmt.Errorf("%w: rate_burst_bytes %v is below %d, one full-size packet (MaxPacketSizeTCP) with its frame header: such a bucket never admits one, and every full-size packet would be dropped (0 = default 1 MiB)",
			ErrConfig, c.RateBurstBytes, MinRateBurstBytes)
	}
	if c.HandshakeTimeout < 0 || c.MaxHandshakes < 0 || c.MaxHandshakesPerSource < 0 {
		return fmt.Errorf("%w: negative handshake_timeout, max_handshakes or max_handshakes_per_source", ErrConfig)
	}
	if d := c.withDefaults(); d.MaxHandshakesPerSource > d.MaxHandshakes {
		return fmt.Errorf("%w: max_handshakes_per_source %d is above max_handshakes %d", ErrConfig, d.MaxHandshakesPerSource, d.MaxHandshakes)
	}
	if c.MaxPolicyBytes < 0 || c.MaxPolicyBytes > wire.MaxPolicySize || c.PolicyOfferEvery < 0 {
		return fmt.Errorf("%w: max_policy_bytes must be 0..%d and policy_offer_every not negative", ErrConfig, wire.MaxPolicySize)
	}
	return nil
}

func (c ServerConfig) withDefaults() ServerConfig {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.RateBytesPerSec == 0 {
		c.RateBytesPerSec = 12_500_000
	}
	if c.RateBurstBytes == 0 {
		c.RateBurstBytes = 1 << 20
	}
	if c.QueueLen == 0 {
		c.QueueLen = 512
	}
	if c.MaxConnsPerMember == 0 {
		c.MaxConnsPerMember = 4
	}
	if c.MaxPolicyBytes == 0 {
		c.MaxPolicyBytes = wire.MaxPolicySize
	}
	if c.PolicyOfferEvery == 0 {
		c.PolicyOfferEvery = DefaultPolicyOfferEvery
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxHandshakes == 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	if c.MaxHandshakesPerSource == 0 {
		c.MaxHandshakesPerSource = DefaultMaxHandshakesPerSource
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// DefaultIdleTimeout is ServerConfig.IdleTimeout's default: the QUIC
// MaxIdleTimeout, 600 pings at the clients' default PingInterval.
const DefaultIdleTimeout = 30 * time.Second

// Server forwards packets between members and to other relays. It owns no
// sockets: feed it QUIC connections (ServeQUIC) and TCP connections
// (ServeTCP, ServeConn), and run RunMesh to reach the other relays.
type Server struct {
	cfg  ServerConfig
	log  *slog.Logger
	m    *metrics
	auth atomic.Pointer[authBox]
	tls  *tls.Config

	closed    chan struct{} // closed by Close
	closeOnce sync.Once
	meshKick  chan struct{}
	gate      *handshakeGate // handshakes in progress
	hlog      *handshakeLog  // handshake failures: counted, logged rate-limited

	mu      sync.RWMutex
	members map[string]*memberState
	relays  map[*peer]struct{}
	routes  map[string]map[*peer]struct{} // member -> relay peers announcing it
	peers   map[*peer]struct{}
}

type authBox struct{ a Authority }

type memberState struct {
	mu     sync.Mutex
	bucket *bucket
	conns  []*peer // oldest first; the newest receives
}

type peer struct {
	id     string
	relay  bool
	link   *link
	chain  []*x509.Certificate
	kick   chan struct{}    // relay peers: local member set changed
	routes map[string]bool  // relay peers: members it announced (under Server.mu)
	policy *policyAssembler // member peers: POLICY transfer (stream reader only)
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg: cfg, log: cfg.Logger, // the caller names the relay (key relay), once
		m:        newMetrics(cfg.Registerer, "memberd_relay", "relay"),
		meshKick: make(chan struct{}, 1),
		members:  map[string]*memberState{},
		relays:   map[*peer]struct{}{},
		routes:   map[string]map[*peer]struct{}{},
		peers:    map[*peer]struct{}{},
		gate:     newHandshakeGate(cfg.MaxHandshakesPerSource, cfg.MaxHandshakes),
	}
	s.hlog = newHandshakeLog(s.log, cfg.Registerer)
	s.m.dlog = newDropLog(s.log, cfg.Now)
	s.closed = make(chan struct{})
	s.auth.Store(&authBox{cfg.Authority})
	s.tls = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cfg.Identity},
		// Request, not require: VerifyConnection refuses a missing
		// certificate too, and so can count it (no_certificate).
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{wire.ALPN},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != wire.ALPN {
				return fmt.Errorf("client did not offer ALPN %q", wire.ALPN)
			}
			_, _, err := s.identify(cs.PeerCertificates)
			if err != nil {
				return &refusedError{reason: refusalReason(cs.PeerCertificates, err, s.cfg.Now()), err: err}
			}
			return nil
		},
	}
	return s, nil
}

func (s *Server) authority() Authority { return s.auth.Load().a }

// identify names the peer behind a certificate chain: a relay of the policy
// (by pin) or a member (by CA). Non-members get an error, so refusal happens
// in the TLS handshake, before any forwarding state exists.
func (s *Server) identify(chain []*x509.Certificate) (id string, isRelay bool, err error) {
	if len(chain) == 0 {
		return "", false, fmt.Errorf("%w: no client certificate", ErrNotMember)
	}
	a := s.authority()
	pin := PinOf(chain[0])
	for _, r := range a.Relays() {
		if r.Pin == pin && r.ID != s.cfg.ID {
			return r.ID, true, nil
		}
	}
	m, err := a.MemberForCert(chain, s.cfg.Now())
	if err != nil {
		return "", false, err
	}
	return m, false, nil
}

// TLSConfig returns the TLS configuration to give quic.Listen (and that
// ServeConn uses for TLS over TCP). Do not modify it.
func (s *Server) TLSConfig() *tls.Config { return s.tls }

// QUICConfig returns the QUIC configuration to give Transport.Listen.
// quic-go closes a connection whose handshake took 2×HandshakeIdleTimeout,
// so that is set to half of HandshakeTimeout.
func (s *Server) QUICConfig() *quic.Config {
	c := quicConfig(15 * time.Second)
	c.HandshakeIdleTimeout = s.cfg.HandshakeTimeout / 2
	return c
}

func quicConfig(keepAlive time.Duration) *quic.Config {
	return &quic.Config{
		EnableDatagrams:       true,
		KeepAlivePeriod:       keepAlive,
		MaxIdleTimeout:        30 * time.Second,
		HandshakeIdleTimeout:  5 * time.Second,
		MaxIncomingStreams:    4,
		MaxIncomingUniStreams: -1,
	}
}

// UpdateAuthority swaps in a new policy snapshot. Connections of peers the
// new snapshot no longer admits (removed, revoked) are closed before it
// returns; ACL changes apply to the next packet.
func (s *Server) UpdateAuthority(a Authority) {
	s.auth.Store(&authBox{a})
	s.mu.Lock()
	var cut []*peer
	for p := range s.peers {
		id, isRelay, err := s.identify(p.chain)
		if err != nil || id != p.id || isRelay != p.relay {
			cut = append(cut, p)
		}
	}
	for _, p := range cut {
		s.unregisterLocked(p)
	}
	s.mu.Unlock()
	for _, p := range cut {
		s.closedConn(CloseNotAdmitted)
		s.log.Info("closing connection no longer admitted by the policy", "peer", p.id, "relay_peer", p.relay)
		p.link.close(codeNotAllowed, "no longer admitted by the consortium policy")
	}
	select {
	case s.meshKick <- struct{}{}:
	default:
	}
}

// ClosedConns returns the admitted connections the relay closed so far,
// by reason (CloseIdle, ...).
func (s *Server) ClosedConns() map[string]uint64 { return s.m.closes.snapshot() }

func (s *Server) closedConn(reason string) { s.m.closes.inc(reason) }

// Drops returns the packets dropped so far by reason.
func (s *Server) Drops() map[string]uint64 { return s.m.snapshot() }

// Members returns the members connected to this relay.
func (s *Server) Members() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.members))
	for m := range s.members {
		out = append(out, m)
	}
	return out
}

// Close closes every connection and makes the Serve methods return. It is
// idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	s.mu.Lock()
	var all []*peer
	for p := range s.peers {
		all = append(all, p)
	}
	s.mu.Unlock()
	for _, p := range all {
		p.link.close(codeShutdown, "relay shutting down")
	}
	return nil
}

// serveCtx is ctx, also cancelled by Close. The caller must call the
// CancelFunc when done (it also ends the goroutine that watches Close).
func (s *Server) serveCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// isClosed reports whether Close was called.
func (s *Server) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// ServeQUIC accepts connections from ln until ctx ends, ln is closed or the
// server is closed, and serves each. It returns after all of them ended.
// Create ln with s.QUICTransport(pc).Listen(s.TLSConfig(), s.QUICConfig()),
// which bounds and counts handshakes (quic.Listen works but does not).
func (s *Server) ServeQUIC(ctx context.Context, ln *quic.Listener) error {
	ctx, cancel := s.serveCtx(ctx)
	defer cancel()
	var g errgroup.Group
	defer g.Wait()
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("relay %s: accepting QUIC: %w", s.cfg.ID, err)
		}
		g.Go(func() error { s.ServeQUICConn(ctx, c); return nil })
	}
}

// ServeTCP accepts TCP connections from ln until ctx ends, ln is closed or
// the server is closed, and serves each with ServeConn. A connection over
// the handshake limits (MaxHandshakesPerSource, MaxHandshakes) is closed at
// once, in this loop, so that a flood of idle connections holds no more
// than MaxHandshakes file descriptors.
func (s *Server) ServeTCP(ctx context.Context, ln net.Listener) error {
	ctx, cancel := s.serveCtx(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var g errgroup.Group
	defer g.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("relay %s: accepting TCP: %w", s.cfg.ID, err)
		}
		release, ok := s.admit(c.RemoteAddr())
		if !ok {
			c.Close()
			continue
		}
		g.Go(func() error { s.serveConnSlot(ctx, c, release); return nil })
	}
}

// ServeQUICConn serves one accepted QUIC connection until it ends. A panic
// while serving it (a bug) is logged, counted and closes c only.
func (s *Server) ServeQUICConn(ctx context.Context, c *quic.Conn) error {
	remote := c.RemoteAddr()
	release := func() {}
	if slot, ok := c.Context().Value(quicSlotKey{}).(*quicSlot); ok && slot.handOver() {
		release = slot.release // taken in QUICTransport's ConnContext
	}
	defer release()
	err := guarded(func() error { return s.serveQUICConn(ctx, c, remote, release) })
	if s.m.survived(ctx, s.log, err, "remote", addrString(remote)) {
		_ = c.CloseWithError(codeProtocol, "internal error")
	}
	return err
}

func (s *Server) serveQUICConn(ctx context.Context, c *quic.Conn, remote net.Addr, release func()) error {
	ctx, cancel := s.serveCtx(ctx)
	defer cancel()
	hctx, hcancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer hcancel()
	st, err := c.AcceptStream(hctx)
	if err != nil {
		_ = c.CloseWithError(codeProtocol, "no control stream")
		if ctx.Err() == nil {
			s.handshakeFailed(remote, err)
		}
		return fmt.Errorf("relay %s: QUIC peer %s opened no control stream: %w", s.cfg.ID, addrString(remote), err)
	}
	_ = st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	l := quicLink(c, st, s.cfg.QueueLen, s.m.drop)
	return s.servePeer(ctx, l, remote, func() { _ = st.SetDeadline(time.Time{}); release() })
}

// ServeConn serves one TCP connection: TLS handshake, HELLO, then frames
// until it ends. It closes c. Over the handshake limits it closes c at
// once. A panic while serving it (a bug) is logged, counted and closes c
// only.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	release, ok := s.admit(c.RemoteAddr())
	if !ok {
		c.Close()
		return fmt.Errorf("relay %s: %w: connection from %s", s.cfg.ID, ErrHandshakeLimit, addrString(c.RemoteAddr()))
	}
	return s.serveConnSlot(ctx, c, release)
}

// serveConnSlot is ServeConn with a handshake slot taken; it gives it back
// when the HELLO exchange ends.
func (s *Server) serveConnSlot(ctx context.Context, c net.Conn, release func()) error {
	defer release()
	remote := c.RemoteAddr()
	err := guarded(func() error { return s.serveConn(ctx, c, remote, release) })
	if s.m.survived(ctx, s.log, err, "remote", addrString(remote)) {
		c.Close()
	}
	return err
}

func (s *Server) serveConn(ctx context.Context, c net.Conn, remote net.Addr, release func()) error {
	ctx, cancel := s.serveCtx(ctx)
	defer cancel()
	tc := tls.Server(c, s.tls)
	_ = c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	hctx, hcancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	hcancel()
	if err != nil {
		c.Close()
		if ctx.Err() == nil {
			s.handshakeFailed(remote, err)
		}
		return fmt.Errorf("relay %s: TLS handshake with %s: %w", s.cfg.ID, addrString(remote), err)
	}
	l := streamLink(PathTCP, tc, s.cfg.QueueLen, s.m.drop)
	return s.servePeer(ctx, l, remote, func() { _ = c.SetDeadline(time.Time{}); release() })
}

// servePeer runs the HELLO exchange and then the link. admitted is
// called after the HELLO exchange (it clears the handshake deadline and
// gives the handshake slot back).
func (s *Server) servePeer(ctx context.Context, l *link, remote net.Addr, admitted func()) error {
	id, isRelay, err := s.identify(l.tls.PeerCertificates)
	if err != nil {
		l.close(codeNotAllowed, "not admitted by the consortium policy")
		s.handshakeFailed(remote, &refusedError{reason: refusalReason(l.tls.PeerCertificates, err, s.cfg.Now()), err: err})
		return err
	}
	f, err := wire.NewReader(l.stream, 64).Next()
	if err == nil && f.Type != wire.TypeHello {
		err = fmt.Errorf("%w: first frame is %v, not HELLO", wire.ErrMalformed, f.Type)
	}
	var h wire.Hello
	if err == nil {
		h, err = wire.ParseHello(f.Body)
	}
	if err == nil && (h.Role == wire.RoleRelay) != isRelay {
		err = fmt.Errorf("%w: HELLO role %d does not match the certificate of %q", wire.ErrMalformed, h.Role, id)
	}
	if err == nil {
		mine := wire.Hello{Version: wire.Version, Role: wire.RoleRelay, Flags: wire.HelloStreamTypes}
		_, err = l.stream.Write(wire.AppendHello(nil, mine))
	}
	if err != nil {
		l.close(codeProtocol, "bad HELLO")
		if ctx.Err() == nil {
			s.handshakeFailed(remote, err)
		}
		return fmt.Errorf("relay %s: HELLO from %q at %s: %w", s.cfg.ID, id, addrString(remote), err)
	}
	admitted()
	// A relay dialling over TLS that forwards the stream types gets them
	// from here too (FORWARD_STREAM); a member never says so.
	l.streamTypes = l.qconn == nil && isRelay && h.Flags&wire.HelloStreamTypes != 0
	return s.runPeer(ctx, l, id, isRelay, remote)
}

// runPeer registers an established link and runs it until it ends.
func (s *Server) runPeer(ctx context.Context, l *link, id string, isRelay bool, remote net.Addr) error {
	p := &peer{id: id, relay: isRelay, link: l, chain: l.tls.PeerCertificates}
	if isRelay {
		p.kick = make(chan struct{}, 1)
		p.routes = map[string]bool{}
	} else {
		p.policy = newPolicyAssembler(s.cfg.MaxPolicyBytes, s.cfg.PolicyOfferEvery, s.cfg.Now())
	}
	evicted, err := s.register(p)
	if errors.Is(err, ErrClosed) {
		l.close(codeShutdown, "relay shutting down")
		return err
	} else if err != nil {
		l.close(codeNotAllowed, "no longer admitted by the consortium policy")
		return err
	}
	if evicted != nil {
		s.closedConn(CloseEvicted)
		s.log.Info("closing the oldest connection of a member over its connection limit", "peer", id)
		evicted.link.close(codeShutdown, "too many connections for this member")
	}
	s.log.Info("peer connected", "peer", id, "relay_peer", isRelay, "path", string(l.path), "remote", addrString(remote))
	if s.cfg.IdleTimeout > 0 {
		stop := l.closeIfIdle(s.cfg.IdleTimeout, func(silent time.Duration) {
			s.closedConn(CloseIdle)
			s.log.Warn("closing a silent relay connection", "reason", CloseIdle, "peer", id, "relay_peer", isRelay,
				"path", string(l.path), "remote", addrString(remote), "silent", silent.Round(time.Millisecond).String(),
				"idle_timeout", s.cfg.IdleTimeout.String())
		})
		defer stop()
	}
	defer func() {
		s.mu.Lock()
		s.unregisterLocked(p)
		s.mu.Unlock()
		s.log.Info("peer disconnected", "peer", id, "relay_peer", isRelay)
	}()
	if !isRelay {
		return l.run(ctx, func(f wire.Frame, owned bool) { s.memberFrame(p, f, owned) })
	}
	var g errgroup.Group
	g.Go(func() error { s.announce(ctx, p); return nil })
	err = l.run(ctx, func(f wire.Frame, owned bool) { s.relayFrame(p, f, owned) })
	g.Wait()
	return err
}

// register adds p to the server's tables; ErrClosed after Close, the
// policy's refusal if it no longer admits p. evicted is a
// connection of the same member beyond MaxConnsPerMember, for the caller
// to close.
func (s *Server) register(p *peer) (evicted *peer, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed() {
		return nil, ErrClosed
	}
	// Check again under the lock: an UpdateAuthority since the handshake
	// either is seen here or will see this peer in its scan.
	if id, isRelay, err := s.identify(p.chain); err != nil {
		return nil, err
	} else if id != p.id || isRelay != p.relay {
		return nil, fmt.Errorf("%w: identity changed during the handshake", ErrNotMember)
	}
	s.peers[p] = struct{}{}
	s.m.conns.Inc()
	if p.relay {
		s.relays[p] = struct{}{}
		p.kick <- struct{}{}
		return nil, nil
	}
	ms := s.members[p.id]
	if ms == nil {
		ms = &memberState{bucket: newBucket(s.cfg.RateBytesPerSec, s.cfg.RateBurstBytes, s.cfg.Now())}
		s.members[p.id] = ms
		s.kickRelaysLocked()
	}
	ms.mu.Lock()
	ms.conns = append(ms.conns, p)
	if len(ms.conns) > s.cfg.MaxConnsPerMember {
		evicted = ms.conns[0]
	}
	ms.mu.Unlock()
	return evicted, nil
}

// unregisterLocked removes p from every table; s.mu is held. Idempotent.
func (s *Server) unregisterLocked(p *peer) {
	if _, ok := s.peers[p]; !ok {
		return
	}
	delete(s.peers, p)
	s.m.conns.Dec()
	if p.relay {
		delete(s.relays, p)
		for m := range p.routes {
			delete(s.routes[m], p)
			if len(s.routes[m]) == 0 {
				delete(s.routes, m)
			}
		}
		return
	}
	ms := s.members[p.id]
	if ms == nil {
		return
	}
	ms.mu.Lock()
	for i, c := range ms.conns {
		if c == p {
			ms.conns = append(ms.conns[:i], ms.conns[i+1:]...)
			break
		}
	}
	empty := len(ms.conns) == 0
	ms.mu.Unlock()
	if empty {
		delete(s.members, p.id)
		s.kickRelaysLocked()
	}
}

func (s *Server) kickRelaysLocked() {
	for r := range s.relays {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// announce keeps relay peer p told which members are attached here: on
// every change it sends ROUTE_ADD/ROUTE_DEL for the difference.
func (s *Server) announce(ctx context.Context, p *peer) {
	told := map[string]bool{}
	for {
		select {
		case <-p.kick:
		case <-p.link.done:
			return
		case <-ctx.Done():
			return
		}
		s.mu.Lock()
		cur := make(map[string]bool, len(s.members))
		for m := range s.members {
			cur[m] = true
		}
		s.mu.Unlock()
		for m := range cur {
			if !told[m] {
				if p.link.sendCtrl(ctx, wire.AppendID(nil, wire.TypeRouteAdd, m)) != nil {
					return
				}
				told[m] = true
			}
		}
		for m := range told {
			if !cur[m] {
				if p.link.sendCtrl(ctx, wire.AppendID(nil, wire.TypeRouteDel, m)) != nil {
					return
				}
				delete(told, m)
			}
		}
	}
}

// memberFrame handles a frame from a member connection; owned: it came in
// a QUIC datagram (see frameHandler).
func (s *Server) memberFrame(p *peer, f wire.Frame, owned bool) {
	switch f.Type {
	case wire.TypePacket, wire.TypePacketStream:
		dst, payload, err := wire.ParsePacket(f.Body)
		if err != nil {
			s.m.drop(DropMalformed)
			return
		}
		s.forward(p, string(dst), payload, onStream(p.link, f.Type, owned), !owned)
	case wire.TypePing:
		p.link.sendData(wire.AppendFrame(nil, wire.TypePong, f.Body))
	case wire.TypePolicy:
		s.policyFrame(p, f, owned)
	case wire.TypeGoAway:
		s.goAway(p, f)
	default: // HELLO again, PONG (the relay pings no member), FORWARD, ROUTE_*, unknown
		s.dropFrame(p, f.Type)
	}
}

// dropFrame counts and logs (rate-limited) a frame of a type p must not
// send on an established link, or of a type this version does not know.
func (s *Server) dropFrame(p *peer, t wire.Type) {
	reason := DropUnexpected
	if !t.Known() {
		reason = DropUnknownType
	}
	s.m.dropWith(reason, "peer", p.id, "relay_peer", p.relay, "type", t.String())
}

// goAway logs why a peer says it is closing its connection (it closes it
// next); rate-limited, since nothing forces a peer to close after it.
func (s *Server) goAway(p *peer, f wire.Frame) {
	code, reason, err := wire.ParseGoAway(f.Body)
	if err != nil {
		s.m.dropWith(DropMalformed, "peer", p.id, "relay_peer", p.relay, "type", f.Type.String())
		return
	}
	if _, ok := s.m.dlog.limit.allow("goaway "+p.id, s.cfg.Now()); ok {
		s.log.Info("peer is closing its connection", "peer", p.id, "relay_peer", p.relay, "code", code, "reason", reason)
	}
}

// onStream says whether a packet frame of type t that l received, owned as
// the frame handler was told (see frameHandler), came on a QUIC
// connection's stream rather than in a DATAGRAM, or is marked for the
// stream (PACKET_STREAM, FORWARD_STREAM: on TLS, where everything comes on
// the stream). Such a packet goes on on the stream of the next hop too
// (link.sendStream): a small packet travels on the stream only when its
// sender wants it there, for a burst (the packets a member resends through
// a backup relay, Client.resend), and as DATAGRAMs the burst overflowed the
// receiver's DATAGRAM queue. An unmarked packet over TLS (from an older
// member or relay) goes on by size, as before.
func onStream(l *link, t wire.Type, owned bool) bool {
	return (l.qconn != nil && !owned) || t == wire.TypePacketStream || t == wire.TypeForwardStream
}

// MinRateBurstBytes is the smallest rate_burst_bytes (ServerConfig.
// RateBurstBytes) a relay accepts: a full-size packet (MaxPacketSizeTCP)
// with its FORWARD frame header. forward takes a packet's bytes from its
// member's bucket at once, so a bucket smaller than that never holds them
// (bucket.wait is -1) and every full-size packet would be dropped
// (rate_limit), stalling bulk transfer through the tunnel, whose MTU is
// set for MaxPacketSizeTCP.
const MinRateBurstBytes = MaxPacketSizeTCP + wire.ForwardOverhead

// maxRateWait bounds how long a member's reliable stream is left unread
// for one frame over the member's rate (see forward). A maximum-size frame
// at the default rate needs 5 ms.
const maxRateWait = 100 * time.Millisecond

// forward sends a member's packet on: to a local connection of dst, else one
// hop to the relay dst is attached to; on the stream of that connection when
// stream is set (see onStream). reliable: the packet was read from p's
// reliable stream (TLS over TCP, or the QUIC stream), not a DATAGRAM.
//
// A packet over the member's rate that came on its reliable stream is not
// dropped at once: forward waits (up to maxRateWait) until the bucket has
// the bytes, and the stream is not read meanwhile, so that TCP's (or
// QUIC's) flow control slows the sender down to the rate. Dropping instead
// let one member make the relay read, decrypt and drop as fast as it could
// send: 945 MB/s from one admitted connection took 0.56 of a core and
// halved the other members' throughput in `make e2e` (member_abuse).
func (s *Server) forward(p *peer, dst string, payload []byte, stream, reliable bool) {
	s.mu.RLock()
	ms := s.members[p.id]
	s.mu.RUnlock()
	if ms == nil {
		s.m.drop(DropClosed) // cut off by UpdateAuthority while the frame was in flight
		return
	}
	ms.mu.Lock()
	ok := ms.bucket.allow(len(payload), s.cfg.Now())
	var wait time.Duration
	if !ok && reliable {
		wait = min(ms.bucket.wait(len(payload), s.cfg.Now()), maxRateWait)
	}
	ms.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.link.done:
			t.Stop()
		}
		ms.mu.Lock()
		ok = ms.bucket.allow(len(payload), s.cfg.Now())
		ms.mu.Unlock()
	}
	if !ok {
		s.m.drop(DropRateLimit)
		return
	}
	if !s.authority().Allowed(p.id, dst) {
		s.m.drop(DropACL)
		return
	}
	if s.deliverLocal(p.id, dst, payload, stream) {
		return
	}
	s.mu.RLock()
	var via *peer
	for r := range s.routes[dst] {
		via = r
		break
	}
	s.mu.RUnlock()
	if via == nil {
		s.m.drop(DropNoRoute)
		return
	}
	if h := s.cfg.ForwardHook; h != nil {
		h(p.id, dst, payload)
	}
	if via.link.sendFrom(p.id, wire.AppendForward(newFrame(wire.ForwardOverhead+len(payload)), p.id, dst, payload), stream) {
		s.m.forward(len(payload))
	}
}

// deliverLocal queues a packet for a member connected here (on the stream
// when stream is set, see onStream); false if dst is not connected here.
func (s *Server) deliverLocal(from, dst string, payload []byte, stream bool) bool {
	s.mu.RLock()
	ms := s.members[dst]
	s.mu.RUnlock()
	if ms == nil {
		return false
	}
	ms.mu.Lock()
	var to *peer
	if n := len(ms.conns); n > 0 {
		to = ms.conns[n-1]
	}
	ms.mu.Unlock()
	if to == nil {
		return false
	}
	if h := s.cfg.ForwardHook; h != nil {
		h(from, dst, payload)
	}
	if to.link.sendFrom(from, wire.AppendPacket(newFrame(wire.PacketOverhead+len(payload)), from, payload), stream) {
		s.m.forward(len(payload))
	}
	return true
}

// relayFrame handles a frame from another relay; owned as for memberFrame.
func (s *Server) relayFrame(p *peer, f wire.Frame, owned bool) {
	switch f.Type {
	case wire.TypeForward, wire.TypeForwardStream:
		src, dst, payload, err := wire.ParseForward(f.Body)
		if err != nil {
			s.m.drop(DropMalformed)
			return
		}
		// The sending relay checked too; both hold the same policy, and a
		// relay never forwards a second hop.
		if !s.authority().Allowed(string(src), string(dst)) {
			s.m.drop(DropACL)
			return
		}
		if !s.deliverLocal(string(src), string(dst), payload, onStream(p.link, f.Type, owned)) {
			s.m.drop(DropNoRoute)
		}
	case wire.TypeRouteAdd, wire.TypeRouteDel:
		id, err := wire.ParseID(f.Body)
		if err != nil {
			s.m.drop(DropMalformed)
			return
		}
		m := string(id)
		s.mu.Lock()
		if _, live := s.peers[p]; live {
			if f.Type == wire.TypeRouteAdd {
				if s.routes[m] == nil {
					s.routes[m] = map[*peer]struct{}{}
				}
				s.routes[m][p] = struct{}{}
				p.routes[m] = true
			} else {
				delete(s.routes[m], p)
				if len(s.routes[m]) == 0 {
					delete(s.routes, m)
				}
				delete(p.routes, m)
			}
		}
		s.mu.Unlock()
	case wire.TypePing:
		p.link.sendData(wire.AppendFrame(nil, wire.TypePong, f.Body))
	case wire.TypePong: // the answer to meshPinger's pings (on the dialled link)
	case wire.TypeGoAway:
		s.goAway(p, f)
	default: // HELLO again, PACKET, POLICY, unknown
		s.dropFrame(p, f.Type)
	}
}

var _ io.Closer = (*Server)(nil)

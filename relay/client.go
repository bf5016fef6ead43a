package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/internal/diag"
	"github.com/memberd/memberd/relay/wire"
)

// ClientConfig configures a relay Client. The zero value of every optional
// field means the default written next to it.
type ClientConfig struct {
	// Identity is this appliance's TLS client certificate, issued by its
	// member CA; PrivateKey is a crypto.Signer (the HSM key). Required.
	Identity tls.Certificate
	// GetClientCertificate, when set, is asked for the client certificate
	// at every (re)connection instead of Identity (which may then be
	// empty), so that a rotated identity is used from the next connection
	// on (e.g. identity.Provider.GetClientCertificate).
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// Relays to connect to, all at once. Required (at least one).
	Relays []RelayInfo
	// QUICTimeout is how long to wait for a QUIC answer before falling
	// back to TLS over TCP. Default 1s.
	QUICTimeout time.Duration
	// TCPTimeout bounds a TCP (or proxy) connect plus TLS handshake.
	// Default 10s.
	TCPTimeout time.Duration
	// Proxy is an HTTP CONNECT proxy (http://user:pass@host:port) for the
	// TCP path. Nil means HTTPS_PROXY / NO_PROXY from the environment
	// (unless NoEnvProxy); localhost is never proxied from the environment.
	Proxy *url.URL
	// NoEnvProxy ignores HTTPS_PROXY.
	NoEnvProxy bool
	// KeepAlive is the QUIC keepalive and TCP keepalive period, well under
	// common middlebox idle timeouts. Default 15s.
	KeepAlive time.Duration
	// PingInterval is how often each relay is pinged to measure RTT and
	// liveness. Default 50ms (an 8-byte frame each way).
	PingInterval time.Duration
	// SuspectAfter: while the relay packets go to has been quiet for this
	// long plus twice its RTT, every packet is also sent through the
	// freshest other relay, so a relay that dies without a word (kill -9 or
	// a power cut: QUIC over UDP sees no error) costs about this much
	// traffic, well under raft's election timeout (1s by default); the
	// last packets sent through the quiet relay are sent again through
	// the other one then. If the quiet relay was only slow, the receiver
	// gets both copies and WireGuard's replay window drops the second.
	// Must exceed PingInterval. Default 150ms.
	SuspectAfter time.Duration
	// FailBackAfter: a relay connection that came up again (a relay back
	// from a restart) carries traffic only after this long, unless no
	// other relay is healthy; the first connection to each relay is used
	// at once. Default 2s.
	FailBackAfter time.Duration
	// DeadAfter: a relay from which nothing arrived for this long is not
	// used for sending at all; after 4× this the connection is dropped and
	// redialled. Must exceed SuspectAfter. Default 1.2s.
	DeadAfter time.Duration
	// ReprobeInterval is how often a relay reached over TCP is re-probed
	// over QUIC; on success the client moves back up. Default 30s.
	ReprobeInterval time.Duration
	// BackoffMin and BackoffMax bound reconnect delays (exponential with
	// full jitter). Defaults 250ms and 30s.
	BackoffMin, BackoffMax time.Duration
	// QueueLen bounds the send queue per relay connection, RecvQueueLen the
	// received packets waiting for ReadPacket. Defaults 512 and 1024.
	QueueLen, RecvQueueLen int
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the client's metrics; nil registers none.
	Registerer prometheus.Registerer
	// DialStream, when set, opens the connection to a relay address for
	// TLS instead of the TCP dialer, and QUIC is neither tried nor
	// re-probed (the proxy settings are ignored): an in-process network,
	// as in the seeded simulation (test/sim), where UDP sockets would
	// leave the process. nil: QUIC, then TCP or the proxy.
	DialStream func(ctx context.Context, addr string) (net.Conn, error)

	role byte // wire.RoleMember, or RoleRelay for the mesh
}

// Validate checks the configuration.
func (c *ClientConfig) Validate() error {
	if c.GetClientCertificate == nil && (len(c.Identity.Certificate) == 0 || c.Identity.PrivateKey == nil) {
		return fmt.Errorf("%w: no client certificate and key", ErrConfig)
	}
	if len(c.Relays) == 0 {
		return fmt.Errorf("%w: no relays to connect to", ErrConfig)
	}
	seen := map[string]bool{}
	for _, r := range c.Relays {
		if err := r.Validate(); err != nil {
			return err
		}
		if seen[r.ID] {
			return fmt.Errorf("%w: relay %q listed twice", ErrConfig, r.ID)
		}
		seen[r.ID] = true
	}
	if c.BackoffMax != 0 && c.BackoffMax < c.BackoffMin {
		return fmt.Errorf("%w: backoff max %v below min %v", ErrConfig, c.BackoffMax, c.BackoffMin)
	}
	d := c.withDefaults()
	if d.SuspectAfter <= d.PingInterval || d.DeadAfter <= d.SuspectAfter {
		return fmt.Errorf("%w: relay liveness timers must grow: ping interval %v < suspect after %v < dead after %v",
			ErrConfig, d.PingInterval, d.SuspectAfter, d.DeadAfter)
	}
	return nil
}

func (c ClientConfig) withDefaults() ClientConfig {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.QUICTimeout, time.Second)
	def(&c.TCPTimeout, 10*time.Second)
	def(&c.KeepAlive, 15*time.Second)
	def(&c.PingInterval, 50*time.Millisecond)
	def(&c.SuspectAfter, 150*time.Millisecond)
	def(&c.FailBackAfter, 2*time.Second)
	def(&c.DeadAfter, 1200*time.Millisecond)
	def(&c.ReprobeInterval, 30*time.Second)
	def(&c.BackoffMin, 250*time.Millisecond)
	def(&c.BackoffMax, 30*time.Second)
	if c.QueueLen <= 0 {
		c.QueueLen = 512
	}
	if c.RecvQueueLen <= 0 {
		c.RecvQueueLen = 1024
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.role == 0 {
		c.role = wire.RoleMember
	}
	c.Relays = append([]RelayInfo(nil), c.Relays...)
	return c
}

// Sizes reported by MaxPacketSize.
const (
	// MaxPacketSizeTCP is what every path accepts (the name is from when
	// QUIC carried datagram-sized packets only). Packets larger than a
	// small frame travel on the QUIC control stream. Every relay and
	// member reads frames up to wire.MaxBody, so older ones take these
	// too. It was 4096: 16384 costs the tunnel about a third less CPU per
	// byte of bulk transfer (issue #15, tunnel BenchmarkThroughput).
	MaxPacketSizeTCP = 16384
	// MaxPacketSizeNoPath is reported while no relay is connected: what the
	// smallest QUIC path carries.
	MaxPacketSizeNoPath = 1200 - 60 - wire.ForwardOverhead
)

// Client keeps connections to every relay and sends each packet on one
// healthy relay (on two while that one is quiet: see route). It implements the tunnel's PacketTransport: packets are
// addressed by member id; the relay names the sender from its certificate.
type Client struct {
	cfg    ClientConfig
	log    *slog.Logger
	m      *metrics
	relays atomic.Pointer[[]*relayConn] // replaced by SetRelays, never mutated
	dialer *dialer
	setMu  sync.Mutex // serialises SetRelays, Run's start and Close; guards runCtx
	// runCtx is Run's, while it runs (nil before): relays added by
	// SetRelays are kept connected until it ends.
	runCtx context.Context
	recv   chan inPacket
	// urgentRecv holds the small packets received (up to urgentFrame:
	// raft heartbeats and their answers, TCP acknowledgements), read before
	// recv's: consensus first (issue #15) on the receiving member too. As
	// long as recv (RecvQueueLen, at least urgentRecvMin): a sender's
	// resend burst (up to recentLen small packets at once, see
	// Client.resend) arrives together, oldest first, and with 256 entries
	// a reader late by a few ms lost the newest of it, the very packets
	// the dead relay had swallowed.
	urgentRecv chan inPacket
	copies     atomic.Uint64 // packets also sent on a backup relay (see route)
	recent     recentSent    // the last packets sent, for resending on a backup

	g         errgroup.Group
	done      chan struct{} // closed by Close
	closeOnce sync.Once

	polMu      sync.Mutex
	pol        []encodedPolicy // OfferPolicy's bundles, oldest first
	polChanged chan struct{}   // closed and replaced by OfferPolicy
}

// urgentRecvMin is the least room for small received packets: two
// resend bursts (recentLen each).
const urgentRecvMin = 2 * recentLen

type inPacket struct {
	from string
	data []byte
}

// relayConn is the client's state for one relay.
type relayConn struct {
	info   RelayInfo
	cur    atomic.Pointer[link]
	cancel context.CancelFunc // nil until Run connects it (under Client.setMu)
	everUp bool               // a connection was established once; runRelay's goroutine only

	rtt atomic.Int64 // nanoseconds, from the last pong

	mu        sync.Mutex
	state     string
	lastErr   string
	lastClose string
	since     time.Time
	bytesIn   uint64 // of links already closed
	bytesOut  uint64
	drops     atomic.Uint64
	upgrades  int
}

// NewClient validates cfg and returns a Client; it dials nothing and starts
// no goroutine. Run connects to the relays (WaitReady waits for the first);
// Close stops it, with or without Run.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	prefix := "memberd_relay_client"
	if cfg.role == wire.RoleRelay {
		prefix = "memberd_relay_mesh"
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger,
		m:          newMetrics(cfg.Registerer, prefix, "relay client"),
		recv:       make(chan inPacket, cfg.RecvQueueLen),
		urgentRecv: make(chan inPacket, max(cfg.RecvQueueLen, urgentRecvMin)),
		done:       make(chan struct{}),

		polChanged: make(chan struct{}),
	}
	var env func(*url.URL) (*url.URL, error)
	if !cfg.NoEnvProxy {
		env = envProxy()
	}
	d := &dialer{
		identity: cfg.Identity, getIdentity: cfg.GetClientCertificate, role: cfg.role,
		quicTimeout: cfg.QUICTimeout, tcpTimeout: cfg.TCPTimeout, keepAlive: cfg.KeepAlive,
		proxy: proxyFor(cfg.Proxy, env), queueLen: cfg.QueueLen, dialStream: cfg.DialStream,
	}
	c.dialer = d
	c.relays.Store(&[]*relayConn{})
	if err := c.SetRelays(cfg.Relays); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// SetRelays replaces the relay list (after a policy change): relays that
// stay (same id, address and pin) keep their connections, new ones are
// dialled (once Run runs), removed ones are disconnected. The order is the
// preference order for sending.
func (c *Client) SetRelays(relays []RelayInfo) error {
	cfg := c.cfg
	cfg.Relays = relays
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.setMu.Lock()
	defer c.setMu.Unlock()
	select {
	case <-c.done:
		return net.ErrClosed
	default:
	}
	old := map[RelayInfo]*relayConn{}
	for _, rc := range *c.relays.Load() {
		old[rc.info] = rc
	}
	next := make([]*relayConn, 0, len(relays))
	for _, r := range relays {
		if rc, ok := old[r]; ok {
			next = append(next, rc)
			delete(old, r)
			continue
		}
		rc := &relayConn{info: r, state: "connecting", since: time.Now()}
		next = append(next, rc)
		if c.runCtx != nil {
			c.connect(c.runCtx, rc)
		}
	}
	c.relays.Store(&next)
	for _, rc := range old {
		c.log.Info("relay removed from the list: disconnecting", "relay", rc.info.ID)
		if rc.cancel != nil {
			rc.cancel()
		}
	}
	return nil
}

// connect keeps rc connected until ctx ends, it is removed (SetRelays) or
// the client closed. setMu held.
func (c *Client) connect(ctx context.Context, rc *relayConn) {
	rctx, rcancel := context.WithCancel(ctx)
	rc.cancel = rcancel
	rd := *c.dialer
	rd.drop = func(reason string) { rc.drops.Add(1); c.m.drop(reason) }
	c.g.Go(func() error {
		// runRelay returns when rctx ends, or after a panic: then again.
		for rctx.Err() == nil {
			err := guarded(func() error { c.runRelay(rctx, rc, &rd); return nil })
			c.m.survived(rctx, c.log, err, "relay", rc.info.ID)
		}
		return nil
	})
}

// Run connects to every relay (and to those SetRelays adds later) and keeps
// them connected until ctx ends or Close is called. When it returns the
// Client is closed (as by Close). Run may be called once.
func (c *Client) Run(ctx context.Context) error {
	c.setMu.Lock()
	select {
	case <-c.done:
		c.setMu.Unlock()
		return net.ErrClosed
	default:
	}
	if c.runCtx != nil {
		c.setMu.Unlock()
		return errors.New("relay client: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.runCtx = ctx
	for _, rc := range *c.relays.Load() {
		c.connect(ctx, rc)
	}
	c.setMu.Unlock()
	select {
	case <-ctx.Done():
	case <-c.done:
	}
	return c.Close()
}

// WaitReady blocks until at least one relay is connected and, on QUIC, its
// datagram size has settled (path MTU discovery, at most ~300ms), so that
// MaxPacketSize is final; or until ctx ends.
func (c *Client) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if l := c.pick(); l != nil {
			select {
			case <-l.settled:
				return nil
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrNoRelay, c.errSummary())
		case <-c.done:
			return net.ErrClosed
		case <-t.C:
		}
	}
}

func (c *Client) errSummary() string {
	s := ""
	for _, st := range c.Status() {
		if st.LastError != "" {
			s += fmt.Sprintf("[%s: %s] ", st.ID, st.LastError)
		}
	}
	return s
}

// runRelay keeps one relay connected: dial the best path, serve it, back
// off, repeat; while on TCP, re-probe QUIC.
func (c *Client) runRelay(ctx context.Context, rc *relayConn, d *dialer) {
	backoff := c.cfg.BackoffMin
	for ctx.Err() == nil {
		l, qerr, err := d.dialBest(ctx, rc.info)
		if err != nil {
			rc.setState("down", err)
			c.log.Warn("relay unreachable", "relay", rc.info.ID, "addr", rc.info.Addr, "err", err)
			// Full jitter: a random wait in [backoff/2, backoff].
			wait := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			backoff = min(backoff*2, c.cfg.BackoffMax)
			continue
		}
		if qerr != nil {
			c.log.Info("relay reached over TCP after QUIC failed", "relay", rc.info.ID, "path", string(l.path), "quic_err", qerr.Error())
		}
		backoff = c.cfg.BackoffMin
		if !rc.everUp {
			// The first connection to a relay is usable at once (the
			// policy order holds from the start); reconnections wait
			// FailBackAfter (see route).
			l.upAt, rc.everUp = 0, true
		}
		for l != nil {
			l = c.serve(ctx, rc, d, l)
		}
	}
}

// serve runs link l until it fails. It returns a replacement link when a
// QUIC re-probe succeeded while on TCP, else nil.
func (c *Client) serve(ctx context.Context, rc *relayConn, d *dialer, l *link) *link {
	rc.cur.Store(l)
	rc.setState("up", nil)
	c.m.conns.Inc()
	c.log.Info("relay connected", "relay", rc.info.ID, "path", string(l.path))
	var next atomic.Pointer[link]
	lctx, cancel := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error { c.pinger(lctx, rc, l); return nil })
	g.Go(func() error { c.offerPolicies(lctx, l); return nil })
	if l.path == PathQUIC {
		g.Go(func() error { l.settleDatagramSize(lctx, pmtudWait); return nil })
		g.Go(func() error { c.hedgeTCP(lctx, rc, d, l, &next); return nil })
	}
	if l.path != PathQUIC && d.dialStream == nil {
		g.Go(func() error {
			t := time.NewTicker(c.cfg.ReprobeInterval)
			defer t.Stop()
			for {
				select {
				case <-lctx.Done():
					return nil
				case <-t.C:
				}
				nl, err := d.dialQUIC(lctx, rc.info)
				if err != nil {
					continue
				}
				c.log.Info("relay reachable over QUIC again: moving up", "relay", rc.info.ID, "from", string(l.path))
				next.Store(nl)
				// Same relay, proven: no fail-back wait. Switch sending
				// first, then retire the TCP link.
				nl.upAt = l.upAt
				rc.cur.Store(nl)
				l.close(codeShutdown, "moved to QUIC")
				return nil
			}
		})
	}
	err := l.run(lctx, func(f wire.Frame, owned bool) { c.frame(rc, l, f, owned) })
	cancel()
	if ctx.Err() == nil && next.Load() == nil {
		// Lost (e.g. a TCP reset): what l took lately may be lost too.
		if p := c.pick(); p != nil {
			c.resend(l, p)
		}
	}
	g.Wait()
	c.m.survived(ctx, c.log, err, "relay", rc.info.ID)
	c.m.conns.Dec()
	rc.cur.CompareAndSwap(l, nil)
	rc.mu.Lock()
	rc.bytesIn += l.bytesIn.Load()
	rc.bytesOut += l.bytesOut.Load()
	rc.mu.Unlock()
	if nl := next.Load(); nl != nil {
		if nl.path == PathQUIC { // not the move of a silent QUIC link to TCP (hedgeTCP)
			rc.mu.Lock()
			rc.upgrades++
			rc.mu.Unlock()
		}
		return nl
	}
	if r := l.goAway.Load(); r != nil {
		err = fmt.Errorf("relay closed the connection: %s", *r)
	}
	if ctx.Err() == nil {
		rc.setState("down", err)
		rc.mu.Lock()
		if err != nil {
			rc.lastClose = err.Error()
		}
		rc.mu.Unlock()
		c.log.Warn("relay connection lost", "relay", rc.info.ID, "path", string(l.path), "err", err)
	}
	return nil
}

// hedgeTCP watches a QUIC link for silence. A firewall that starts
// dropping UDP without a word, established flows too, gives QUIC no error:
// the link used to be given up only by the pinger (4×DeadAfter) and then
// redialled QUIC first (QUICTimeout), about 6 s in all, long enough to
// cost raft its leader. Instead, once the link has been silent for
// 2×SuspectAfter (300 ms), TLS over TCP (or the proxy) to the same relay is
// dialled beside it; if the QUIC link is still silent at DeadAfter/2
// (600 ms) with the TCP link up, traffic moves to TCP at once (what the
// QUIC link may have swallowed is sent again there) and the QUIC link is
// closed: under raft's 1 s election timeout. The TCP link is re-probed
// over QUIC every ReprobeInterval as usual, so a wrong suspicion (a QUIC
// link only slow for 600 ms) costs at most that long on TCP. If the QUIC
// link answers again before the switch, the TCP link is closed unused.
func (c *Client) hedgeTCP(ctx context.Context, rc *relayConn, d *dialer, l *link, next *atomic.Pointer[link]) {
	dialAfter, switchAfter := 2*c.cfg.SuspectAfter, c.cfg.DeadAfter/2
	if dialAfter >= switchAfter {
		dialAfter = switchAfter / 2
	}
	quiet := func() time.Duration { return time.Since(time.Unix(0, l.lastRecv.Load())) }
	tick := time.NewTicker(c.cfg.PingInterval)
	defer tick.Stop()
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-l.done:
			return false
		case <-tick.C:
			return true
		}
	}
	for wait() {
		if quiet() < dialAfter {
			continue
		}
		silentFor := quiet()
		proxy, err := d.proxy(rc.info.Addr)
		if err != nil {
			continue
		}
		tl, err := d.dialTCP(ctx, rc.info, proxy)
		if err != nil {
			c.log.Debug("relay quiet over QUIC; TCP beside it failed too", "relay", rc.info.ID, "silent_for", silentFor.String(), "err", err)
			for quiet() >= dialAfter && wait() { // try again once QUIC has answered and gone quiet again
			}
			continue
		}
		for {
			q := quiet()
			if q < dialAfter {
				tl.close(codeShutdown, "QUIC answered again")
				break
			}
			if q >= switchAfter {
				c.log.Warn("relay silent over QUIC (UDP dropped on the way?): moved to TCP", "relay", rc.info.ID,
					"path", string(tl.path), "silent_for", q.Round(time.Millisecond).String())
				tl.upAt = l.upAt // same relay, proven: no fail-back wait
				next.Store(tl)
				rc.cur.Store(tl)
				c.resend(l, tl)
				l.close(codeShutdown, "QUIC silent: moved to TCP")
				return
			}
			if !wait() {
				tl.close(codeShutdown, "shutting down")
				return
			}
		}
	}
}

// pinger measures RTT (the pongs) and drops the link when the relay was
// silent for 4×DeadAfter. At 1×DeadAfter the relay already stopped being
// used for sending (healthy, failover to the others); the connection itself
// is kept longer so that a relay that is only slow is not redialled.
func (c *Client) pinger(ctx context.Context, rc *relayConn, l *link) {
	l.keepalive(ctx, c.cfg.PingInterval, 4*c.cfg.DeadAfter, func(silent time.Duration) {
		c.log.Warn("relay silent: reconnecting", "relay", rc.info.ID, "silent_for", silent.String())
	})
}

// frame handles a frame from a relay; owned says whether the body may be
// kept (see frameHandler).
func (c *Client) frame(rc *relayConn, l *link, f wire.Frame, owned bool) {
	switch f.Type {
	case wire.TypePacket:
		from, payload, err := wire.ParsePacket(f.Body)
		if err != nil {
			c.m.drop(DropMalformed)
			return
		}
		if !owned {
			payload = append([]byte(nil), payload...)
		}
		c.received(rc, inPacket{from: string(from), data: payload})
	case wire.TypePong:
		if len(f.Body) == 8 {
			sent := int64(binary.BigEndian.Uint64(f.Body))
			rc.rtt.Store(time.Now().UnixNano() - sent)
		}
	case wire.TypeGoAway:
		code, reason, err := wire.ParseGoAway(f.Body)
		if err == nil {
			c.log.Warn("relay is closing our connection", "relay", rc.info.ID, "code", code, "reason", reason)
			l.goAway.Store(&reason)
		} else {
			c.m.drop(DropMalformed)
		}
	default: // a type relays do not send to members (PING, FORWARD...), or unknown
		if f.Type.Known() {
			c.m.drop(DropUnexpected)
		} else {
			c.m.drop(DropUnknownType)
		}
	}
}

func (rc *relayConn) setState(state string, err error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.state != state {
		rc.since = time.Now()
	}
	rc.state = state
	if err != nil {
		rc.lastErr = err.Error()
	} else if state == "up" {
		rc.lastErr = ""
	}
}

// healthy returns rc's link if it is open and the relay answered within
// DeadAfter, with how long ago that was.
func (c *Client) healthy(rc *relayConn, now time.Time) (*link, time.Duration) {
	l := rc.cur.Load()
	if l == nil || l.closed() {
		return nil, 0
	}
	quiet := now.Sub(time.Unix(0, l.lastRecv.Load()))
	if quiet > c.cfg.DeadAfter {
		return nil, 0
	}
	return l, quiet
}

// route returns where a packet goes: primary, the link of the first
// healthy relay in configuration order, so all packets of a flow use one
// relay while it lives (a link that connected less than FailBackAfter ago
// only when no older one is healthy, and then the oldest: traffic moves
// back to a restarted relay once it has proven itself, not the moment it
// answers); and backup, while primary has been quiet for more
// than SuspectAfter plus twice its RTT, the link of the other healthy
// relay heard from most recently (nil otherwise). Packets go to both, and
// WritePacket resends there what primary may have swallowed (resend).
//
// Why: a relay that dies abruptly gives no error on QUIC (no CONNECTION_CLOSE,
// and ICMP does not reach quic-go's unconnected socket), so only silence
// tells; waiting for DeadAfter of it cost raft its leader. Copying
// instead of switching makes a wrong suspicion (a slow relay, a busy host)
// cost duplicates, which WireGuard drops, never packets; a closed
// connection (TCP reset, QUIC close) is skipped at once.
func (c *Client) route(now time.Time) (primary, backup *link) {
	relays := *c.relays.Load()
	var quiet time.Duration
	var on *relayConn
	var young *link // the oldest healthy link still in its FailBackAfter
	var youngQuiet time.Duration
	var youngOn *relayConn
	for _, rc := range relays {
		l, q := c.healthy(rc, now)
		if l == nil {
			continue
		}
		if now.UnixNano()-l.upAt < int64(c.cfg.FailBackAfter) {
			if young == nil || l.upAt < young.upAt {
				young, youngQuiet, youngOn = l, q, rc
			}
			continue
		}
		primary, quiet, on = l, q, rc
		break
	}
	if primary == nil {
		primary, quiet, on = young, youngQuiet, youngOn
	}
	if primary == nil || quiet <= c.cfg.SuspectAfter+2*time.Duration(on.rtt.Load()) {
		return primary, nil
	}
	var backupQuiet time.Duration
	for _, rc := range relays {
		l, q := c.healthy(rc, now)
		if l == nil || l == primary {
			continue
		}
		if backup == nil || q < backupQuiet {
			backup, backupQuiet = l, q
		}
	}
	return primary, backup
}

// pick returns the primary link (see route).
func (c *Client) pick() *link {
	l, _ := c.route(time.Now())
	return l
}

// WritePacket sends pkt to member through one healthy relay. It never
// blocks: a full queue drops the packet (counted) like UDP would. It does
// not retain pkt.
func (c *Client) WritePacket(pkt []byte, member string) error {
	select {
	case <-c.done:
		return net.ErrClosed
	default:
	}
	if !wire.ValidID(member) {
		return fmt.Errorf("relay: member id %q must be 1..%d bytes", member, wire.MaxIDLen)
	}
	if len(pkt)+wire.ForwardOverhead > wire.MaxBody {
		c.m.drop(DropTooLarge)
		return fmt.Errorf("%w: %d bytes", ErrPacketSize, len(pkt))
	}
	now := time.Now()
	l, backup := c.route(now)
	if l == nil {
		c.m.drop(DropNoRoute)
		return fmt.Errorf("%w: all relays down (%s)", ErrNoRelay, c.errSummary())
	}
	f := wire.AppendPacket(newFrame(wire.PacketOverhead+len(pkt)), member, pkt)
	if backup != nil {
		c.resend(l, backup)
		c.copy(backup, append(newFrame(len(f)), f...), false)
	}
	if len(*c.relays.Load()) > 1 {
		c.recent.add(l, f, now)
	}
	l.sendData(f)
	return nil
}

// resend sends through backup, once per quiet spell of l, the recent
// packets l may have swallowed: those sent on it since DeadAfter before
// the last thing l received (bounded by recentLen). What reached the
// receiver the other way is dropped there as a replay; a busy host that
// read l's last frames late does not shrink the window. They go on
// backup's stream (copy), which the relay keeps for the next hop.
func (c *Client) resend(l, backup *link) {
	heard := l.lastRecv.Load()
	done := l.resentFor.Load()
	if done == heard || !l.resentFor.CompareAndSwap(done, heard) {
		return
	}
	for _, f := range c.recent.since(l, time.Unix(0, heard).Add(-c.cfg.DeadAfter)) {
		c.copy(backup, f, true)
	}
}

// copy sends frame, a copy of a packet sent on another link, on backup:
// on its stream when burst is set (a resend: up to recentLen frames at
// once, which as QUIC DATAGRAMs overflowed quic-go's DATAGRAM receive
// queue at the relay and at the receiver, see link.sendStream), else as
// the packet itself would travel.
func (c *Client) copy(backup *link, frame []byte, burst bool) {
	backup.send(frame, burst)
	c.copies.Add(1)
	c.m.copied.Inc()
}

// received queues a packet from a relay for ReadPacket, the small ones
// (urgentFrame) in urgentRecv: without it a raft heartbeat arriving
// behind a bulk transfer waited for up to RecvQueueLen full-size packets
// (megabytes) to be decrypted and handled before it. Reordering small
// packets ahead is harmless (see urgentFrame). diag.NoPriority turns it
// off.
func (c *Client) received(rc *relayConn, p inPacket) {
	q := c.recv
	if len(p.data) <= urgentFrame && !diag.NoPriority {
		q = c.urgentRecv
	}
	select {
	case q <- p:
	default:
		if rc != nil {
			rc.drops.Add(1)
		}
		c.m.drop(DropQueueFull)
	}
}

// nextReceived returns the next received packet, a small one first; with
// wait it blocks until one arrives or the client closes (ok false).
func (c *Client) nextReceived(wait bool) (p inPacket, ok bool) {
	select {
	case p = <-c.urgentRecv:
		return p, true
	default:
	}
	if !wait {
		select {
		case p = <-c.recv:
			return p, true
		default:
			return p, false
		}
	}
	select {
	case p = <-c.urgentRecv:
		return p, true
	case p = <-c.recv:
		return p, true
	case <-c.done:
		return p, false
	}
}

// ReadPacket blocks until a packet arrives, copies it into buf and returns
// its length and sender; small packets waiting go first (received). After
// Close it returns net.ErrClosed. A packet longer than buf is dropped with
// io.ErrShortBuffer.
func (c *Client) ReadPacket(buf []byte) (int, string, error) {
	p, ok := c.nextReceived(true)
	if !ok {
		return 0, "", net.ErrClosed
	}
	if len(p.data) > len(buf) {
		c.m.drop(DropTooLarge)
		return 0, p.from, fmt.Errorf("relay: %d-byte packet from %q: %w", len(p.data), p.from, io.ErrShortBuffer)
	}
	return copy(buf, p.data), p.from, nil
}

// ReadPackets is ReadPacket for a batch: it blocks until a packet arrives,
// then also takes the packets already waiting, up to len(bufs), without
// waiting for more. It copies packet i into bufs[i], its length into
// sizes[i] and its sender into from[i] and returns how many it took. A
// waiting packet longer than its buffer is dropped (counted); one that
// arrives first fails the call as in ReadPacket.
//
// Why: the tunnel's WireGuard hands each batch to its decryption workers
// in one go; one packet per call cost a goroutine hand-off per packet.
func (c *Client) ReadPackets(bufs [][]byte, sizes []int, from []string) (int, error) {
	n, member, err := c.ReadPacket(bufs[0])
	if err != nil {
		return 0, err
	}
	sizes[0], from[0] = n, member
	k := 1
	for k < len(bufs) && k < len(sizes) && k < len(from) {
		p, ok := c.nextReceived(false)
		if !ok {
			break
		}
		if len(p.data) > len(bufs[k]) {
			c.m.drop(DropTooLarge)
			continue
		}
		sizes[k], from[k] = copy(bufs[k], p.data), p.from
		k++
	}
	return k, nil
}

// MaxPacketSize is the largest packet the current path carries well:
// MaxPacketSizeTCP on every path, QUIC included, where packets larger than
// a small frame travel on the stream anyway (link.writeLoop), so a
// datagram-sized MTU only multiplied the packets (issue #15: 4096 instead
// of ~1300 bytes cut the tunnel's per-packet work, WireGuard, netstack and
// QUIC, about threefold for bulk transfer; 16384 a third more).
func (c *Client) MaxPacketSize() int {
	if c.pick() == nil {
		return MaxPacketSizeNoPath
	}
	return MaxPacketSizeTCP
}

// Close disconnects from every relay and waits for the client's goroutines.
// It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.setMu.Lock()
		for _, rc := range *c.relays.Load() {
			if rc.cancel != nil {
				rc.cancel()
			}
		}
		c.setMu.Unlock()
		_ = c.g.Wait()
	})
	return nil
}

// RelayStatus is one relay as the client sees it.
type RelayStatus struct {
	ID        string        `json:"id"`
	Addr      string        `json:"addr"`
	State     string        `json:"state"`          // connecting, up, down (also at once when no longer used for sending)
	Path      Path          `json:"path,omitempty"` // quic, tcp, proxy; empty unless up
	Healthy   bool          `json:"healthy"`        // answered within DeadAfter: eligible for sending
	Active    bool          `json:"active"`         // the relay packets are being sent on
	Backup    bool          `json:"backup"`         // packets are copied to it too: the active relay is quiet
	RTT       time.Duration `json:"rtt_ns"`
	BytesIn   uint64        `json:"bytes_in"`
	BytesOut  uint64        `json:"bytes_out"`
	Drops     uint64        `json:"drops"`
	Upgrades  int           `json:"upgrades"` // moves from TCP back to QUIC
	Since     time.Time     `json:"since"`
	LastError string        `json:"last_error,omitempty"` // the last failure: dial, handshake or lost connection
	LastClose string        `json:"last_close,omitempty"` // why the last established connection ended
}

// Status reports every relay.
func (c *Client) Status() []RelayStatus {
	now := time.Now()
	active, backup := c.route(now)
	relays := *c.relays.Load()
	out := make([]RelayStatus, 0, len(relays))
	for _, rc := range relays {
		rc.mu.Lock()
		st := RelayStatus{
			ID: rc.info.ID, Addr: rc.info.Addr, State: rc.state, RTT: time.Duration(rc.rtt.Load()),
			BytesIn: rc.bytesIn, BytesOut: rc.bytesOut, Drops: rc.drops.Load(),
			Upgrades: rc.upgrades, Since: rc.since, LastError: rc.lastErr, LastClose: rc.lastClose,
		}
		rc.mu.Unlock()
		if l := rc.cur.Load(); l != nil {
			st.Path = l.path
			st.BytesIn += l.bytesIn.Load()
			st.BytesOut += l.bytesOut.Load()
			hl, _ := c.healthy(rc, now)
			st.Healthy = hl != nil
			st.Active = l == active
			st.Backup = backup != nil && l == backup
		}
		out = append(out, st)
	}
	for i := range out {
		c.reportSilence(&out[i], relays[i].cur.Load(), now)
	}
	return out
}

// reportSilence makes the state follow what routes the traffic (route) at
// once, not when the pinger gives a silent connection up (4×DeadAfter): a
// relay that is up but no longer used for sending (silent for DeadAfter,
// or its connection gone) reads "down". While the active relay is only
// quiet (past SuspectAfter), it stays "up" and the relay the packets are
// copied to reads backup: it is still connected, and may be just slow.
func (c *Client) reportSilence(st *RelayStatus, l *link, now time.Time) {
	if st.State != "up" || st.Healthy {
		return
	}
	st.State = "down"
	if l == nil {
		return
	}
	heard := time.Unix(0, l.lastRecv.Load())
	st.Since = heard.Add(c.cfg.DeadAfter)
	st.LastError = fmt.Sprintf("no answer from the relay for %v (unused after %v of silence); reconnecting after %v",
		now.Sub(heard).Round(time.Millisecond), c.cfg.DeadAfter, 4*c.cfg.DeadAfter)
}

// Drops returns the packets the client dropped so far, by reason.
func (c *Client) Drops() map[string]uint64 { return c.m.snapshot() }

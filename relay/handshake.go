package relay

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/relay/wire"
)

// Handshake defaults (ServerConfig, relay.yaml limits).
const (
	// DefaultHandshakeTimeout bounds a connection from accept (TCP) or
	// first packet (QUIC) to the end of the HELLO exchange. A member's
	// client gives QUIC 1s before it tries TCP, and a TLS 1.3 handshake
	// is one round trip plus an HSM signature on each side, so 3s leaves
	// room for slow proxies and HSMs while a silent connection holds a
	// slot (and a file descriptor) for 3s instead of 10s.
	DefaultHandshakeTimeout = 3 * time.Second
	// DefaultMaxHandshakes bounds handshakes in progress over all sources.
	DefaultMaxHandshakes = 256
	// DefaultMaxHandshakesPerSource bounds handshakes in progress from one
	// source (an IPv4 address, an IPv6 /64). An appliance opens at most a
	// few connections per relay at once (QUIC, TCP fallback, a re-probe),
	// so 16 leaves room for several appliances behind one NAT address.
	DefaultMaxHandshakesPerSource = 16
)

// Handshake failure reasons, the values of the "reason" label of
// memberd_relay_handshake_failures_total.
const (
	HandshakeFailTimeout         = "timeout"           // no TLS hello or HELLO frame within HandshakeTimeout
	HandshakeFailTLSError        = "tls_error"         // not TLS 1.3 with ALPN memberd/1, or a broken handshake
	HandshakeFailNoCertificate   = "no_certificate"    // the client sent no certificate
	HandshakeFailUnknownCA       = "unknown_ca"        // the certificate chains to no member CA of the policy
	HandshakeFailExpired         = "expired"           // the certificate is outside its validity period
	HandshakeFailRevoked         = "revoked"           // the certificate is revoked by the policy
	HandshakeFailOverLimitSource = "over_limit_source" // MaxHandshakesPerSource in progress from this source
	HandshakeFailOverLimitTotal  = "over_limit_total"  // MaxHandshakes in progress
	HandshakeFailBadFrame        = "bad_frame"         // the first frame is not a valid HELLO
)

var handshakeReasons = []string{HandshakeFailTimeout, HandshakeFailTLSError, HandshakeFailNoCertificate, HandshakeFailUnknownCA,
	HandshakeFailExpired, HandshakeFailRevoked, HandshakeFailOverLimitSource, HandshakeFailOverLimitTotal, HandshakeFailBadFrame}

// refusedError is the certificate check's refusal with its reason; the
// transport that ran the handshake counts and logs it.
type refusedError struct {
	reason string
	err    error
}

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// refusalReason names why identify refused a certificate chain.
func refusalReason(chain []*x509.Certificate, err error, now time.Time) string {
	switch {
	case len(chain) == 0:
		return HandshakeFailNoCertificate
	case errors.Is(err, ErrRevoked):
		return HandshakeFailRevoked
	case chain[0] != nil && (now.Before(chain[0].NotBefore) || now.After(chain[0].NotAfter)):
		return HandshakeFailExpired
	default:
		return HandshakeFailUnknownCA
	}
}

// handshakeReason names a failed TLS handshake or HELLO exchange.
func handshakeReason(err error) string {
	var qerr *quic.TransportError
	var herr *quic.HandshakeTimeoutError
	var ierr *quic.IdleTimeoutError
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		return refused.reason
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &herr), errors.As(err, &ierr):
		return HandshakeFailTimeout
	case errors.Is(err, wire.ErrMalformed):
		return HandshakeFailBadFrame
	case errors.As(err, &qerr), err != nil:
		return HandshakeFailTLSError
	}
	return ""
}

// sourceKey is the unit MaxHandshakesPerSource counts: an IPv4 address or
// an IPv6 /64 (one host usually holds a whole /64). A source that is not
// an IP address (a test pipe) counts as one.
func sourceKey(a net.Addr) netip.Prefix {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	}
	ip = ip.Unmap()
	switch {
	case ip.Is4():
		return netip.PrefixFrom(ip, 32)
	case ip.Is6():
		p, _ := ip.Prefix(64)
		return p
	}
	return netip.Prefix{}
}

// handshakeGate bounds handshakes in progress, per source and in total.
type handshakeGate struct {
	perSource, total int

	mu    sync.Mutex // guards n and bySrc
	n     int
	bySrc map[netip.Prefix]int
}

func newHandshakeGate(perSource, total int) *handshakeGate {
	return &handshakeGate{perSource: perSource, total: total, bySrc: map[netip.Prefix]int{}}
}

// acquire takes a slot for a handshake from remote. It returns the
// function that gives the slot back (idempotent), or the reason it was
// refused.
func (g *handshakeGate) acquire(remote net.Addr) (release func(), refused string) {
	k := sourceKey(remote)
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.bySrc[k] >= g.perSource:
		return nil, HandshakeFailOverLimitSource
	case g.n >= g.total:
		return nil, HandshakeFailOverLimitTotal
	}
	g.n++
	g.bySrc[k]++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.n--
			if g.bySrc[k]--; g.bySrc[k] <= 0 {
				delete(g.bySrc, k)
			}
		})
	}, ""
}

// inProgress returns the handshakes in progress.
func (g *handshakeGate) inProgress() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// handshakeLog counts handshake failures by reason and logs them at WARN,
// at most one line per reason per interval: a flood of a million
// connections writes a few lines, each with how many it stands for.
type handshakeLog struct {
	log     *slog.Logger
	counter *reasonCounter
	limit   *logLimiter
}

// logLimiter lets through at most one log line per key per interval and
// counts the ones it held back.
type logLimiter struct {
	interval time.Duration

	mu   sync.Mutex // guards last
	last map[string]*logWindow
}

type logWindow struct {
	at         time.Time
	suppressed int
}

func newLogLimiter(interval time.Duration) *logLimiter {
	return &logLimiter{interval: interval, last: map[string]*logWindow{}}
}

// allow reports whether a line for key may be written at now and, if so,
// how many were held back since the last one.
func (l *logLimiter) allow(key string, now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.last[key]
	if w == nil {
		w = &logWindow{}
		l.last[key] = w
	}
	if !w.at.IsZero() && now.Sub(w.at) < l.interval {
		w.suppressed++
		return 0, false
	}
	suppressed = w.suppressed
	w.at, w.suppressed = now, 0
	return suppressed, true
}

const handshakeLogEvery = 10 * time.Second

func newHandshakeLog(log *slog.Logger, reg prometheus.Registerer) *handshakeLog {
	c := newReasonCounter("memberd_relay_handshake_failures_total",
		"Connections to the relay refused or failed before the HELLO exchange completed, by reason.",
		"reason", handshakeReasons)
	if reg != nil {
		c.vec = register(reg, c.vec)
	}
	return &handshakeLog{log: log, counter: c, limit: newLogLimiter(handshakeLogEvery)}
}

// fail counts one failure and logs it unless a line for the same reason
// was written within the interval.
func (h *handshakeLog) fail(reason string, remote net.Addr, err error, now time.Time) {
	h.counter.inc(reason)
	suppressed, ok := h.limit.allow(reason, now)
	if !ok {
		return
	}
	attrs := []any{"reason", reason, "remote", addrString(remote), "more_since_last_line", suppressed,
		"log_every", h.limit.interval.String()}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	h.log.Warn("relay connection refused or failed before admission", attrs...)
}

// admit takes a handshake slot for a connection from remote, or counts
// and logs why not.
func (s *Server) admit(remote net.Addr) (release func(), ok bool) {
	release, refused := s.gate.acquire(remote)
	if refused != "" {
		s.hlog.fail(refused, remote, nil, s.cfg.Now())
		return nil, false
	}
	return release, true
}

// handshakeFailed counts and logs a failed handshake or HELLO exchange.
func (s *Server) handshakeFailed(remote net.Addr, err error) {
	s.hlog.fail(handshakeReason(err), remote, err, s.cfg.Now())
}

// ErrHandshakeLimit: a connection was refused because too many handshakes
// were in progress (MaxHandshakesPerSource or MaxHandshakes).
var ErrHandshakeLimit = errors.New("too many relay handshakes in progress")

// quicSlot is the handshake slot of one QUIC connection, taken in
// ConnContext and handed over to ServeQUICConn once quic-go accepted the
// connection; if the connection ends before that, the slot is given back
// and the failure counted.
type quicSlot struct {
	release func()

	mu     sync.Mutex // guards handed
	handed bool       // ServeQUICConn owns release; or the handshake failed
}

type quicSlotKey struct{}

// handOver marks the slot as taken by whoever calls first: ServeQUICConn
// (true: it must call release) or the failed handshake.
func (q *quicSlot) handOver() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.handed {
		return false
	}
	q.handed = true
	return true
}

// QUICTransport returns the quic.Transport to listen on pc with:
//
//	tr := s.QUICTransport(pc)
//	ln, err := tr.Listen(s.TLSConfig(), s.QUICConfig())
//
// It takes a handshake slot for every new connection (quic-go refuses one
// over the limits with CONNECTION_REFUSED, counted over_limit_source or
// over_limit_total), counts handshakes that fail by reason, and, while
// more than half of MaxHandshakes are in progress, makes new clients prove
// their source address with a Retry first, so that spoofed Initial packets
// cannot fill the slots. Close the transport after the listener.
func (s *Server) QUICTransport(pc net.PacketConn) *quic.Transport {
	return &quic.Transport{
		Conn: pc,
		ConnContext: func(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
			release, ok := s.admit(ci.RemoteAddr)
			if !ok {
				return nil, fmt.Errorf("relay %s: %w from %s", s.cfg.ID, ErrHandshakeLimit, addrString(ci.RemoteAddr))
			}
			slot := &quicSlot{release: release}
			remote := ci.RemoteAddr
			context.AfterFunc(ctx, func() {
				if slot.handOver() { // ended before ServeQUICConn took it
					release()
					if !s.isClosed() {
						s.handshakeFailed(remote, context.Cause(ctx))
					}
				}
			})
			return context.WithValue(ctx, quicSlotKey{}, slot), nil
		},
		VerifySourceAddress: func(net.Addr) bool { return s.gate.inProgress() > s.cfg.MaxHandshakes/2 },
	}
}

// HandshakeFailures returns the connections refused or failed before
// admission so far, by reason.
func (s *Server) HandshakeFailures() map[string]uint64 { return s.hlog.counter.snapshot() }

// HandshakesInProgress returns the connections now in their handshake.
func (s *Server) HandshakesInProgress() int { return s.gate.inProgress() }

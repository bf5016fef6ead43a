package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/http/httpproxy"

	"github.com/memberd/memberd/relay/wire"
)

// dialer opens relay protocol links to relays: QUIC, TLS over TCP, or TLS
// through an HTTP CONNECT proxy.
type dialer struct {
	identity    tls.Certificate
	getIdentity func(*tls.CertificateRequestInfo) (*tls.Certificate, error) // overrides identity when set
	role        byte
	quicTimeout time.Duration
	tcpTimeout  time.Duration
	keepAlive   time.Duration
	proxy       func(addr string) (*url.URL, error)
	queueLen    int
	drop        func(string)
	// dialStream replaces QUIC and the TCP dialer (ClientConfig.DialStream).
	dialStream func(ctx context.Context, addr string) (net.Conn, error)
}

func (d *dialer) tlsConfig(r RelayInfo) *tls.Config {
	host, _, _ := net.SplitHostPort(r.Addr)
	certs := []tls.Certificate{d.identity}
	if d.getIdentity != nil {
		certs = nil
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		Certificates:         certs,
		GetClientCertificate: d.getIdentity,
		NextProtos:           []string{wire.ALPN},
		ServerName:           host,
		// The relay is authenticated by the pin of its public key in the
		// policy, not by a web PKI name: VerifyConnection checks it.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: relay %q at %s sent no certificate", ErrPin, r.ID, r.Addr)
			}
			if got := PinOf(cs.PeerCertificates[0]); got != r.Pin {
				return fmt.Errorf("%w: relay %q at %s presented key %s, policy pins %s", ErrPin, r.ID, r.Addr, got, r.Pin)
			}
			if cs.NegotiatedProtocol != wire.ALPN {
				return fmt.Errorf("relay %q at %s does not speak %s", r.ID, r.Addr, wire.ALPN)
			}
			return nil
		},
	}
}

// dialBest tries QUIC, then TLS over TCP (through the proxy if one applies).
// qerr is why QUIC failed when the link is a TCP one.
func (d *dialer) dialBest(ctx context.Context, r RelayInfo) (l *link, qerr, err error) {
	if d.dialStream != nil {
		l, err = d.dialTCP(ctx, r, nil)
		return l, nil, err
	}
	l, qerr = d.dialQUIC(ctx, r)
	if qerr == nil {
		return l, nil, nil
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	proxy, err := d.proxy(r.Addr)
	if err != nil {
		return nil, nil, fmt.Errorf("proxy for relay %q: %w", r.ID, err)
	}
	l, err = d.dialTCP(ctx, r, proxy)
	if err != nil {
		return nil, nil, fmt.Errorf("%v; then %w", qerr, err)
	}
	return l, qerr, nil
}

// dialQUIC opens a QUIC connection and its control stream and exchanges
// HELLO, all within the QUIC timeout.
func (d *dialer) dialQUIC(ctx context.Context, r RelayInfo) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, d.quicTimeout)
	defer cancel()
	qc, err := quic.DialAddr(ctx, r.Addr, d.tlsConfig(r), quicConfig(d.keepAlive))
	if err != nil {
		return nil, fmt.Errorf("QUIC to relay %q at %s: %w", r.ID, r.Addr, err)
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		_ = qc.CloseWithError(codeProtocol, "no stream")
		return nil, fmt.Errorf("QUIC stream to relay %q at %s: %w", r.ID, r.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	if _, err := d.hello(st); err != nil {
		_ = qc.CloseWithError(codeProtocol, "bad HELLO")
		return nil, fmt.Errorf("relay %q at %s over QUIC: %w", r.ID, r.Addr, err)
	}
	_ = st.SetDeadline(time.Time{})
	l := quicLink(qc, st, d.queueLen, d.drop)
	l.maxDatagram.Store(int64(probeDatagramSize(qc)))
	return l, nil
}

// pmtudWait bounds how long a new QUIC link waits for path MTU discovery.
const pmtudWait = 300 * time.Millisecond

// settleDatagramSize lets quic-go's path MTU discovery raise the datagram
// limit above what the 1280-byte initial packets allow, for up to limit
// (or until ctx ends), storing each larger limit in l.maxDatagram, and
// closes l.settled at the end. The tunnel sizes its MTU from the link
// (WaitReady waits for settled; tunnel/mtu.go follows later path changes
// for new connections), so this means ~1300-byte
// instead of ~1140-byte tunnel packets where the path allows them: fewer
// packets for the same bytes, and the QUIC path is per-packet CPU bound.
// quic-go probes only while it sends, so a PING goes out at every poll;
// discovery probes every 5 RTTs and is taken as settled when nothing grew
// for 12 RTTs.
func (l *link) settleDatagramSize(ctx context.Context, limit time.Duration) {
	defer close(l.settled)
	size := l.maxDatagram.Load()
	deadline := time.Now().Add(limit)
	last := time.Now()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		quiet := max(12*l.qconn.ConnectionStats().SmoothedRTT, 10*time.Millisecond)
		now := time.Now()
		if now.After(deadline) || now.Sub(last) > quiet {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-l.done:
			return
		case <-t.C:
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
		l.sendData(wire.AppendFrame(nil, wire.TypePing, b[:]))
		if n := int64(probeDatagramSize(l.qconn)); n > size {
			size, last = n, time.Now()
			l.maxDatagram.Store(n)
		}
	}
}

// probeDatagramSize asks quic-go for the largest datagram payload without
// sending anything: SendDatagram refuses an oversized one with the limit.
func probeDatagramSize(qc *quic.Conn) int {
	var tooLarge *quic.DatagramTooLargeError
	if err := qc.SendDatagram(make([]byte, wire.MaxBody+1)); errors.As(err, &tooLarge) {
		return int(tooLarge.MaxDatagramPayloadSize)
	}
	return 1200 - 60 // no answer: the smallest QUIC packet minus headers
}

// dialTCP opens TLS over TCP, directly or through proxy, and exchanges
// HELLO.
func (d *dialer) dialTCP(ctx context.Context, r RelayInfo, proxy *url.URL) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, d.tcpTimeout)
	defer cancel()
	var nc net.Conn
	var err error
	path := PathTCP
	if proxy != nil {
		path = PathProxy
		nc, err = dialConnect(ctx, proxy, r.Addr)
	} else if d.dialStream != nil {
		nc, err = d.dialStream(ctx, r.Addr)
	} else {
		var nd net.Dialer
		nc, err = nd.DialContext(ctx, "tcp", r.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("TCP to relay %q at %s: %w", r.ID, r.Addr, err)
	}
	if tcp, ok := nc.(*net.TCPConn); ok {
		_ = tcp.SetKeepAlive(true)
		_ = tcp.SetKeepAlivePeriod(d.keepAlive)
	}
	tc := tls.Client(nc, d.tlsConfig(r))
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("TLS to relay %q at %s (%s): %w", r.ID, r.Addr, path, err)
	}
	h, err := d.hello(tc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("relay %q at %s (%s): %w", r.ID, r.Addr, path, err)
	}
	_ = nc.SetDeadline(time.Time{})
	l := streamLink(path, tc, d.queueLen, d.drop)
	l.streamTypes = h.Flags&wire.HelloStreamTypes != 0
	return l, nil
}

// hello sends our HELLO and returns the relay's. A relay's HELLO (the
// mesh) says it understands the stream types (wire.HelloStreamTypes), a
// member's says nothing: relays send members PACKET only.
func (d *dialer) hello(rw interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}) (wire.Hello, error) {
	mine := wire.Hello{Version: wire.Version, Role: d.role}
	if d.role == wire.RoleRelay {
		mine.Flags = wire.HelloStreamTypes
	}
	if _, err := rw.Write(wire.AppendHello(nil, mine)); err != nil {
		return wire.Hello{}, err
	}
	f, err := wire.NewReader(rw, 64).Next()
	if err != nil {
		// A relay that refuses our certificate closes the connection
		// after the handshake: say so rather than "EOF".
		return wire.Hello{}, fmt.Errorf("no HELLO from the relay (is this appliance's certificate admitted by the policy?): %w", err)
	}
	if f.Type != wire.TypeHello {
		return wire.Hello{}, fmt.Errorf("%w: relay sent %v before HELLO", wire.ErrMalformed, f.Type)
	}
	return wire.ParseHello(f.Body)
}

// proxyFor returns the proxy to use for a relay address: the configured one,
// else HTTPS_PROXY/NO_PROXY from the environment (localhost is never
// proxied), else nil.
func proxyFor(configured *url.URL, env func(*url.URL) (*url.URL, error)) func(addr string) (*url.URL, error) {
	return func(addr string) (*url.URL, error) {
		if configured != nil {
			return configured, nil
		}
		if env == nil {
			return nil, nil
		}
		return env(&url.URL{Scheme: "https", Host: addr})
	}
}

func envProxy() func(*url.URL) (*url.URL, error) {
	return httpproxy.FromEnvironment().ProxyFunc()
}

// dialConnect opens a tunnel to addr through an HTTP CONNECT proxy. A
// status other than 2xx is returned verbatim, wrapped in ErrProxy.
func dialConnect(ctx context.Context, proxy *url.URL, addr string) (net.Conn, error) {
	if proxy.Scheme != "http" && proxy.Scheme != "" {
		return nil, fmt.Errorf("%w: proxy %s: only http:// proxies are supported", ErrProxy, proxy.Redacted())
	}
	host := proxy.Host
	if proxy.Port() == "" {
		host = net.JoinHostPort(proxy.Hostname(), "80")
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", proxy.Redacted(), err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: memberd\r\n", addr, addr)
	if u := proxy.User; u != nil {
		pw, _ := u.Password()
		cred := base64.StdEncoding.EncodeToString([]byte(u.Username() + ":" + pw))
		fmt.Fprintf(&b, "Proxy-Authorization: Basic %s\r\n", cred)
	}
	b.WriteString("\r\n")
	if _, err := c.Write([]byte(b.String())); err != nil {
		c.Close()
		return nil, fmt.Errorf("proxy %s: %w", proxy.Redacted(), err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("proxy %s: reading CONNECT answer: %w", proxy.Redacted(), err)
	}
	if resp.StatusCode/100 != 2 {
		c.Close()
		return nil, fmt.Errorf("%w: proxy %s answered CONNECT %s with %q", ErrProxy, proxy.Redacted(), addr, resp.Proto+" "+resp.Status)
	}
	_ = c.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

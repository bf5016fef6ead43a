package relaytest

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"

	"github.com/quic-go/quic-go"
)

// Server is what Relay needs of a relay.Server. It is declared here
// because relaytest cannot import relay (relay's own tests import this
// package).
type Server interface {
	TLSConfig() *tls.Config
	QUICConfig() *quic.Config
	ServeTCP(ctx context.Context, ln net.Listener) error
	ServeQUIC(ctx context.Context, ln *quic.Listener) error
	Close() error
}

// Options configure Start. The zero value serves TCP and QUIC.
type Options struct {
	// NoQUIC starts the relay with UDP blocked: TCP only until StartQUIC.
	NoQUIC bool
}

// Relay is one in-process relay: a Server on one address, TLS over TCP
// and QUIC over UDP on the same port number, with the sockets owned by the
// test as the relay daemon owns them, so that a test can drop UDP or make
// the relay vanish as kill -9 does. Start registers Stop as a cleanup.
type Relay struct {
	// Addr is the address served, TCP and UDP (the bound one when Start
	// was given port 0 with NoQUIC).
	Addr string
	// Srv is the server; a restarted relay is a new Relay with a new
	// server on the same Addr.
	Srv Server

	tb     testing.TB
	ctx    context.Context // ends at Stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // serving goroutines and Go's

	mu    sync.Mutex
	udp   net.PacketConn
	ql    *quic.Listener
	tl    net.Listener
	conns []net.Conn // accepted TCP connections, closed raw by Crash
}

// Start serves srv on addr (see FreePort) until Stop.
func Start(tb testing.TB, addr string, srv Server, opt Options) *Relay {
	tb.Helper()
	r := &Relay{Addr: addr, Srv: srv, tb: tb}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	tl, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	r.Addr = tl.Addr().String()
	r.tl = tl
	r.Go(func(ctx context.Context) { srv.ServeTCP(ctx, trackingListener{tl, r}) })
	tb.Cleanup(r.Stop)
	if !opt.NoQUIC {
		r.StartQUIC()
	}
	return r
}

// Go runs fn with a context that ends at Stop, and Stop waits for it: for
// more of the server to run, such as relay.Server.RunMesh.
func (r *Relay) Go(fn func(ctx context.Context)) {
	r.wg.Add(1)
	go func() { defer r.wg.Done(); fn(r.ctx) }()
}

// StartQUIC opens the UDP socket and serves QUIC on it (again after
// StopQUIC: UDP unblocked).
func (r *Relay) StartQUIC() {
	r.tb.Helper()
	udp, err := net.ListenPacket("udp", r.Addr)
	if err != nil {
		r.tb.Fatal(err)
	}
	ql, err := quic.Listen(udp, r.Srv.TLSConfig(), r.Srv.QUICConfig())
	if err != nil {
		udp.Close()
		r.tb.Fatal(err)
	}
	r.mu.Lock()
	r.udp, r.ql = udp, ql
	r.mu.Unlock()
	r.Go(func(ctx context.Context) { r.Srv.ServeQUIC(ctx, ql) })
}

// StopQUIC closes the UDP socket as a firewall dropping UDP would look:
// established QUIC connections just go silent.
func (r *Relay) StopQUIC() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ql != nil {
		r.ql.Close()
		r.udp.Close()
		r.ql, r.udp = nil, nil
	}
}

// Crash makes the relay vanish without telling anyone, as kill -9 does:
// sockets closed, no QUIC CONNECTION_CLOSE sent (the UDP socket is gone
// first), TCP connections closed by the kernel without a GOAWAY. The
// server is closed; goroutines are joined by Stop.
func (r *Relay) Crash() {
	r.StopQUIC()
	r.mu.Lock()
	if r.tl != nil {
		r.tl.Close()
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.Srv.Close()
}

// Stop crashes the relay and waits for its goroutines; idempotent.
func (r *Relay) Stop() {
	r.Crash()
	r.cancel()
	r.wg.Wait()
}

// trackingListener records the connections it accepts.
type trackingListener struct {
	net.Listener
	r *Relay
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.r.mu.Lock()
		l.r.conns = append(l.r.conns, c)
		l.r.mu.Unlock()
	}
	return c, err
}

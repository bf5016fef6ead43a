// Package relayd is the relay daemon ('memberd relay'): a relay.Server
// on one port number (QUIC on UDP, TLS on TCP), its key (PKCS#11, or a dev
// file), its policy (signed bundles from a watched folder, or a static
// section of the config), the mesh with the other relays, the admin
// endpoint and systemd's notify protocol.
//
// Lifecycle: New checks the configuration and does nothing else; Run opens
// the key, the policy and the sockets and serves until its context ends or
// Close is called; Close is idempotent.
package relayd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/authority"
	"github.com/memberd/memberd/internal/daemon"
	"github.com/memberd/memberd/internal/usage"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
)

// Deps is what a Relay gets from its caller besides its Config.
type Deps struct {
	// Logger receives the relay's logs; nil discards.
	Logger *slog.Logger
	// Source names the configuration in errors ("key listen in SOURCE"):
	// normally the path of relay.yaml.
	Source string
	// LoadConfig re-reads the configuration on Reload when the policy is
	// the static section of the config (without policy_dir); nil keeps the
	// policy the relay started with.
	LoadConfig func() (*Config, error)
	// ProcSys is where the UDP buffer limits are read; "" = /proc/sys.
	ProcSys string
}

// Relay is one relay daemon.
type Relay struct {
	cfg  Config
	deps Deps
	log  *slog.Logger

	reload    chan struct{} // Reload: buffered, one pending at most
	ready     chan struct{} // closed once listening
	closed    chan struct{} // closed by Close
	closeOnce sync.Once

	// Set before ready is closed, immutable after.
	addr, adminAddr string

	// Set by Run's open, immutable while serving.
	reg      *prometheus.Registry
	identity tls.Certificate
	watcher  *policy.Watcher // nil with a static policy
	srv      *relay.Server
	tcpLn    net.Listener
	udp      net.PacketConn
	qtr      *quic.Transport
	qln      *quic.Listener // nil while cfg.QUICGate is open
	adminLn  net.Listener
}

// New returns a relay for cfg; it does no I/O and starts nothing.
func New(cfg Config, deps Deps) (*Relay, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, usage.Errorf("relay config %s: %v", deps.Source, err)
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.ProcSys == "" {
		deps.ProcSys = "/proc/sys"
	}
	// The relay names itself once: relay.Server and the policy watcher add
	// no keys of their own.
	return &Relay{cfg: cfg, deps: deps, log: deps.Logger.With("component", "relay", "relay", cfg.ID),
		reload: make(chan struct{}, 1), ready: make(chan struct{}), closed: make(chan struct{})}, nil
}

// Ready is closed once the relay listens; Addr and AdminAddr answer then.
func (r *Relay) Ready() <-chan struct{} { return r.ready }

// Addr is the bound relay address (TCP; UDP is on the same port); "" until
// Ready is closed.
func (r *Relay) Addr() string {
	select {
	case <-r.ready:
		return r.addr
	default:
		return ""
	}
}

// AdminAddr is the bound admin endpoint address; "" until Ready is closed.
func (r *Relay) AdminAddr() string {
	select {
	case <-r.ready:
		return r.adminAddr
	default:
		return ""
	}
}

// Reload re-reads the policy: the policy folder, or the static policy of
// the config (Deps.LoadConfig); a bad one keeps the old policy. It does not
// block; reloads asked while one is pending are one.
func (r *Relay) Reload() {
	select {
	case r.reload <- struct{}{}:
	default:
	}
}

// Close stops Run; idempotent.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() { close(r.closed) })
	return nil
}

// Run runs the relay until ctx ends or Close is called.
func (r *Relay) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	daemon.WarnSmallUDPBuffers(r.log, r.deps.ProcSys)
	closeAll, err := r.open()
	defer closeAll()
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: r.adminHandler(ctx), ReadHeaderTimeout: 5 * time.Second}
	r.log.Info("relay listening", "udp_quic", fmt.Sprint(r.udp.LocalAddr()), "tcp_tls", fmt.Sprint(r.tcpLn.Addr()),
		"admin", r.adminLn.Addr().String(), "pin", relay.PinOf(r.identity.Leaf))
	r.addr, r.adminAddr = r.tcpLn.Addr().String(), r.adminLn.Addr().String()
	close(r.ready)
	g, gctx := errgroup.WithContext(ctx)
	if r.watcher != nil {
		now, cancelSub := r.watcher.Subscribe(func(_, p *policy.Policy, _ *policy.Diff) {
			r.srv.UpdateAuthority(authority.Relay(p))
			r.log.Info("policy applied", "policy_version", p.Version(), "policy_hash", p.Hash().String())
		})
		defer cancelSub()
		r.srv.UpdateAuthority(authority.Relay(now))
		g.Go(func() error {
			if err := r.watcher.Run(gctx); err != nil && gctx.Err() == nil {
				return fmt.Errorf("relay: policy watcher: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error { return r.serveQUIC(gctx) })
	g.Go(func() error { return r.srv.ServeTCP(gctx, r.tcpLn) })
	g.Go(func() error { return r.srv.RunMesh(gctx) })
	// Listeners are up: READY=1 at once; WATCHDOG=1 after each /status walk.
	g.Go(func() error { return daemon.NotifySystemd(gctx, r.log, daemon.Probe{Alive: func() { r.status(gctx) }}) })
	g.Go(func() error {
		if err := hs.Serve(r.adminLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("relay: admin endpoint: %w", err)
		}
		return nil
	})
	g.Go(func() error { r.reloadLoop(gctx, hs); return nil })
	err = g.Wait()
	r.log.Info("relay stopped")
	return err
}

// open opens the key, the policy, the server and the sockets. closeAll
// closes what was opened, also on error.
func (r *Relay) open() (closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	cfg, src := &r.cfg, r.deps.Source
	identity, closeKey, err := loadIdentity(cfg, r.log)
	if err != nil {
		return closeAll, err
	}
	closers = append(closers, closeKey)
	r.identity = identity
	r.reg = prometheus.NewRegistry()
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var auth relay.Authority
	if cfg.PolicyDir != "" {
		if r.watcher, err = policyWatcher(cfg, r.log, r.reg); err != nil {
			return closeAll, err
		}
		auth = authority.Relay(r.watcher.Current())
	} else if auth, err = staticAuthority(cfg); err != nil {
		return closeAll, err
	}
	if r.srv, err = relay.NewServer(r.serverConfig(auth)); err != nil {
		return closeAll, usage.Errorf("relay config %s: %v", src, err)
	}
	closers = append(closers, func() { r.srv.Close() })
	if r.tcpLn, r.udp, err = listenSamePort(cfg.Listen); err != nil {
		return closeAll, fmt.Errorf("relay: listening on %s (key listen in %s): %w", cfg.Listen, src, err)
	}
	closers = append(closers, func() { r.tcpLn.Close() }, func() { r.udp.Close() })
	// One transport on the UDP socket: it bounds QUIC handshakes like
	// ServeTCP bounds TCP ones (limits.max_handshakes*).
	r.qtr = r.srv.QUICTransport(r.udp)
	closers = append(closers, func() { r.qtr.Close() })
	if cfg.QUICGate == nil {
		if r.qln, err = r.qtr.Listen(r.srv.TLSConfig(), r.srv.QUICConfig()); err != nil {
			return closeAll, fmt.Errorf("relay: QUIC on %s: %w", r.udp.LocalAddr(), err)
		}
		closers = append(closers, func() { r.qln.Close() })
	}
	if r.adminLn, err = net.Listen("tcp", cfg.Admin); err != nil {
		return closeAll, fmt.Errorf("relay: admin endpoint on %s (key admin in %s): %w", cfg.Admin, src, err)
	}
	return closeAll, nil
}

func (r *Relay) serverConfig(auth relay.Authority) relay.ServerConfig {
	cfg := &r.cfg
	scfg := relay.ServerConfig{
		ID: cfg.ID, Identity: r.identity, Authority: auth, Logger: r.log, Registerer: r.reg,
		RateBytesPerSec: cfg.Limits.RateBytesPerSec, RateBurstBytes: cfg.Limits.RateBurstBytes,
		QueueLen: cfg.Limits.QueueLen, MaxConnsPerMember: cfg.Limits.MaxConnsPerMember,
		HandshakeTimeout: cfg.Limits.HandshakeTimeout, MaxHandshakes: cfg.Limits.MaxHandshakes,
		MaxHandshakesPerSource: cfg.Limits.MaxHandshakesPerSource, IdleTimeout: cfg.Limits.IdleTimeout,
		ForwardHook: cfg.ForwardHook,
	}
	if r.watcher != nil {
		// Members offer the signed versions they apply; verified ones go
		// into policy_dir, where the watcher applies them.
		scfg.Policy = newPolicyStore(r.watcher, cfg.Path(cfg.PolicyDir))
	}
	return scfg
}

// status is the /status document.
func (r *Relay) status(context.Context) any {
	cfg := &r.cfg
	warnings := daemon.UDPBufferWarnings(r.deps.ProcSys)
	if w := daemon.CertificateWarning("relay certificate "+cfg.Path(cfg.Certificate), r.identity.Leaf, time.Now(),
		"have a new certificate issued for the same key (the policy pins the key), put it in place of key certificate and restart the relay"); w != "" {
		warnings = append(warnings, w)
	}
	srv := r.srv
	st := map[string]any{"role": "relay", "id": cfg.ID, "listen": r.tcpLn.Addr().String(), "warnings": append([]string{}, warnings...),
		"members": srv.Members(), "drops": srv.Drops(), "policy_offers": srv.PolicyOffers(),
		"handshake_failures": srv.HandshakeFailures(), "handshakes_in_progress": srv.HandshakesInProgress(),
		"closed_connections": srv.ClosedConns()}
	if r.watcher != nil {
		st["policy_version"] = r.watcher.Current().Version()
	}
	return st
}

// adminHandler serves /metrics /healthz /readyz /status (and pprof).
func (r *Relay) adminHandler(ctx context.Context) http.Handler {
	return admin.Handler(admin.Config{
		Gatherer: r.reg,
		Pprof:    r.cfg.AdminPprof,
		Ready: map[string]admin.Check{"listening": func(context.Context) error {
			if ctx.Err() != nil {
				return errors.New("stopping")
			}
			return nil
		}},
		Status: r.status,
	})
}

// serveQUIC serves QUIC; while cfg.QUICGate is open (tests) it waits for
// the gate to close before it listens.
func (r *Relay) serveQUIC(ctx context.Context) error {
	if r.qln != nil {
		return r.srv.ServeQUIC(ctx, r.qln)
	}
	select {
	case <-r.cfg.QUICGate:
	case <-ctx.Done():
		return nil
	}
	ql, err := r.qtr.Listen(r.srv.TLSConfig(), r.srv.QUICConfig())
	if err != nil {
		return fmt.Errorf("relay: QUIC on %s: %w", r.udp.LocalAddr(), err)
	}
	defer ql.Close()
	r.log.Info("QUIC listener on", "udp_quic", fmt.Sprint(r.udp.LocalAddr()))
	return r.srv.ServeQUIC(ctx, ql)
}

// reloadLoop applies Reloads until ctx ends, then shuts the admin endpoint
// and the server down.
func (r *Relay) reloadLoop(ctx context.Context, hs *http.Server) {
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = hs.Shutdown(sctx)
			r.srv.Close()
			if r.qln != nil {
				r.qln.Close()
			}
			return
		case <-r.reload:
			r.reloadPolicy()
		}
	}
}

func (r *Relay) reloadPolicy() {
	if r.watcher != nil {
		r.watcher.Reload()
		return
	}
	if r.deps.LoadConfig == nil {
		return
	}
	src := r.deps.Source
	nc, err := r.deps.LoadConfig()
	if err == nil {
		var a relay.Authority
		if a, err = staticAuthority(nc); err == nil {
			r.srv.UpdateAuthority(a)
			r.log.Info("policy reloaded", "file", src)
			return
		}
	}
	r.log.Error("policy reload failed: keeping the current policy", "file", src, "err", err)
}

package app

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/quic-go/quic-go"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/authority"
	"github.com/memberd/memberd/internal/daemon"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
)

func newRelayCmd(e *env) *cobra.Command {
	var configPath, logFormat string
	c := &cobra.Command{
		Use:   "relay",
		Short: "Run a relay: members dial out to it on one port (UDP QUIC + TCP TLS) and it forwards their encrypted packets",
		Long: `Run a relay. It listens on ONE port number for QUIC (UDP) and TLS over TCP,
admits only appliances whose certificate chains to a member CA of the policy,
forwards their (WireGuard-encrypted, opaque) packets where the policy's ACL
allows, and meshes with the other relays of the policy.

With policy_dir, the relay applies signed policy bundles from that folder,
and also learns new versions from the members attached to it: each member
offers the versions it applied, and the relay verifies them against its own
policy (admin signatures, version chain) before storing them there.

SIGINT/SIGTERM stop it; SIGHUP re-reads the policy folder (or the static
policy section of the config) and applies it live.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(e.stderr, logFormat)
			if err != nil {
				return err
			}
			cfg, err := loadRelayConfig(configPath)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			reload := make(chan struct{}, 1)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						select {
						case reload <- struct{}{}:
						default:
						}
					}
				}
			}()
			ee := *e
			ee.log = log
			return runRelay(ctx, &ee, configPath, cfg, reload, nil)
		},
	}
	c.Flags().StringVar(&configPath, "config", "/etc/memberd/relay.yaml", "relay configuration file (YAML)")
	c.Flags().StringVar(&logFormat, "log-format", "auto", "log format: json, text, or auto (JSON unless stderr is a terminal)")
	return c
}

// relayAddrs reports where a running relay listens (for tests).
type relayAddrs struct{ relay, admin string }

// runRelay runs a relay from cfg until ctx ends. Every value from reload
// re-reads configPath and applies its policy; a bad file keeps the old
// policy. started, if set, receives the bound addresses.
func runRelay(ctx context.Context, e *env, configPath string, cfg *relayConfig, reload <-chan struct{}, started chan<- relayAddrs) error {
	// The relay names itself once: relay.Server and the policy watcher add
	// no keys of their own.
	log := e.log.With("component", "relay", "relay", cfg.ID)
	daemon.WarnSmallUDPBuffers(log, "/proc/sys")
	identity, closeKey, err := relayIdentity(cfg, log)
	if err != nil {
		return err
	}
	defer closeKey()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var auth relay.Authority
	var watcher *policy.Watcher
	if cfg.PolicyDir != "" {
		watcher, err = relayPolicyWatcher(cfg, log, reg)
		if err != nil {
			return err
		}
		auth = authority.Relay(watcher.Current())
	} else if auth, err = relayAuthority(cfg); err != nil {
		return err
	}
	scfg := relay.ServerConfig{
		ID: cfg.ID, Identity: identity, Authority: auth, Logger: log, Registerer: reg,
		RateBytesPerSec: cfg.Limits.RateBytesPerSec, RateBurstBytes: cfg.Limits.RateBurstBytes,
		QueueLen: cfg.Limits.QueueLen, MaxConnsPerMember: cfg.Limits.MaxConnsPerMember,
		HandshakeTimeout: cfg.Limits.HandshakeTimeout, MaxHandshakes: cfg.Limits.MaxHandshakes,
		MaxHandshakesPerSource: cfg.Limits.MaxHandshakesPerSource,
		ForwardHook:            cfg.forwardHook,
	}
	if watcher != nil {
		// Members offer the signed versions they apply; verified ones go
		// into policy_dir, where the watcher applies them.
		scfg.Policy = newRelayPolicyStore(watcher, cfg.path(cfg.PolicyDir))
	}
	srv, err := relay.NewServer(scfg)
	if err != nil {
		return &UsageError{Err: fmt.Errorf("relay config %s: %w", configPath, err)}
	}
	defer srv.Close()

	tcpLn, udp, err := listenSamePort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("relay: listening on %s (key listen in %s): %w", cfg.Listen, configPath, err)
	}
	defer tcpLn.Close()
	defer udp.Close()
	// One transport on the UDP socket: it bounds QUIC handshakes like
	// ServeTCP bounds TCP ones (limits.max_handshakes*).
	qtr := srv.QUICTransport(udp)
	defer qtr.Close()
	var qln *quic.Listener
	if cfg.quicGate == nil {
		if qln, err = qtr.Listen(srv.TLSConfig(), srv.QUICConfig()); err != nil {
			return fmt.Errorf("relay: QUIC on %s: %w", udp.LocalAddr(), err)
		}
		defer qln.Close()
	}
	adminLn, err := net.Listen("tcp", cfg.Admin)
	if err != nil {
		return fmt.Errorf("relay: admin endpoint on %s (key admin in %s): %w", cfg.Admin, configPath, err)
	}
	status := func(context.Context) any {
		warnings := daemon.UDPBufferWarnings("/proc/sys")
		if w := daemon.CertificateWarning("relay certificate "+cfg.path(cfg.Certificate), identity.Leaf, time.Now(),
			"have a new certificate issued for the same key (the policy pins the key), put it in place of key certificate and restart the relay"); w != "" {
			warnings = append(warnings, w)
		}
		st := map[string]any{"role": "relay", "id": cfg.ID, "listen": tcpLn.Addr().String(), "warnings": append([]string{}, warnings...),
			"members": srv.Members(), "drops": srv.Drops(), "policy_offers": srv.PolicyOffers(),
			"handshake_failures": srv.HandshakeFailures(), "handshakes_in_progress": srv.HandshakesInProgress()}
		if watcher != nil {
			st["policy_version"] = watcher.Current().Version()
		}
		return st
	}
	hs := &http.Server{
		Handler: admin.Handler(admin.Config{
			Gatherer: reg,
			Pprof:    cfg.AdminPprof,
			Ready: map[string]admin.Check{"listening": func(context.Context) error {
				if ctx.Err() != nil {
					return errors.New("stopping")
				}
				return nil
			}},
			Status: status,
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}

	log.Info("relay listening", "udp_quic", fmt.Sprint(udp.LocalAddr()), "tcp_tls", fmt.Sprint(tcpLn.Addr()),
		"admin", adminLn.Addr().String(), "pin", relay.PinOf(identity.Leaf))
	if started != nil {
		started <- relayAddrs{relay: tcpLn.Addr().String(), admin: adminLn.Addr().String()}
	}
	g, gctx := errgroup.WithContext(ctx)
	if watcher != nil {
		now, cancelSub := watcher.Subscribe(func(_, p *policy.Policy, _ *policy.Diff) {
			srv.UpdateAuthority(authority.Relay(p))
			log.Info("policy applied", "policy_version", p.Version(), "policy_hash", p.Hash().String())
		})
		defer cancelSub()
		srv.UpdateAuthority(authority.Relay(now))
		g.Go(func() error {
			if err := watcher.Run(gctx); err != nil && gctx.Err() == nil {
				return fmt.Errorf("relay: policy watcher: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		if qln == nil { // gated (tests): no QUIC until the gate closes
			select {
			case <-cfg.quicGate:
			case <-gctx.Done():
				return nil
			}
			ql, err := qtr.Listen(srv.TLSConfig(), srv.QUICConfig())
			if err != nil {
				return fmt.Errorf("relay: QUIC on %s: %w", udp.LocalAddr(), err)
			}
			defer ql.Close()
			log.Info("QUIC listener on", "udp_quic", fmt.Sprint(udp.LocalAddr()))
			return srv.ServeQUIC(gctx, ql)
		}
		return srv.ServeQUIC(gctx, qln)
	})
	g.Go(func() error { return srv.ServeTCP(gctx, tcpLn) })
	g.Go(func() error { return srv.RunMesh(gctx) })
	// Listeners are up: READY=1 at once; WATCHDOG=1 after each /status walk.
	g.Go(func() error { return daemon.NotifySystemd(gctx, log, daemon.Probe{Alive: func() { status(gctx) }}) })
	g.Go(func() error {
		if err := hs.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("relay: admin endpoint: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_ = hs.Shutdown(sctx)
				srv.Close()
				if qln != nil {
					qln.Close()
				}
				return nil
			case <-reload:
				if watcher != nil {
					watcher.Reload()
					continue
				}
				nc, err := loadRelayConfig(configPath)
				if err == nil {
					var a relay.Authority
					if a, err = relayAuthority(nc); err == nil {
						srv.UpdateAuthority(a)
						log.Info("policy reloaded", "file", configPath)
						continue
					}
				}
				log.Error("policy reload failed: keeping the current policy", "file", configPath, "err", err)
			}
		}
	})
	err = g.Wait()
	log.Info("relay stopped")
	return err
}

// listenSamePort opens TCP and UDP on the same address; with port 0 it
// finds a port free for both.
func listenSamePort(addr string) (net.Listener, net.PacketConn, error) {
	_, port, _ := net.SplitHostPort(addr)
	tries := 1
	if port == "0" {
		tries = 20
	}
	var lastErr error
	for range tries {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		udp, err := net.ListenPacket("udp", tl.Addr().String())
		if err == nil {
			return tl, udp, nil
		}
		tl.Close()
		lastErr = err
	}
	return nil, nil, lastErr
}

// relayIdentity loads the certificate and opens its key (PKCS#11, or a dev
// PEM file when insecure_dev_key is set) and checks they belong together.
func relayIdentity(cfg *relayConfig, log *slog.Logger) (tls.Certificate, func(), error) {
	b, err := os.ReadFile(cfg.path(cfg.Certificate))
	if err != nil {
		return tls.Certificate{}, nil, usagef("key certificate: %v", err)
	}
	certs, err := hsm.ParseCertificatesPEM(b)
	if err != nil || len(certs) == 0 {
		return tls.Certificate{}, nil, usagef("key certificate: %s holds no PEM certificate (%v)", cfg.path(cfg.Certificate), err)
	}
	var signer hsm.Signer
	if cfg.InsecureDevKey {
		log.Warn("INSECURE: the relay's TLS key is a file, for development only", "file", cfg.path(cfg.Key))
		// Each use of the key warns through the logger (a plain line on
		// stderr would break the JSON log stream).
		signer, err = hsm.OpenSoftSigner(cfg.path(cfg.Key), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard, Logger: log})
	} else {
		signer, err = hsm.OpenSigner(cfg.Key, &hsm.Options{Logger: log})
	}
	if err != nil {
		return tls.Certificate{}, nil, usagef("key key: %v", err)
	}
	if !publicKeysEqual(certs[0].PublicKey, signer.Public()) {
		signer.Close()
		return tls.Certificate{}, nil, usagef("key key: does not match the public key of the certificate in %s", cfg.path(cfg.Certificate))
	}
	tc := tls.Certificate{PrivateKey: signer, Leaf: certs[0]}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, func() { signer.Close() }, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// relayPolicyWatcher loads the signed policy of policy_dir.
func relayPolicyWatcher(cfg *relayConfig, log *slog.Logger, reg prometheus.Registerer) (*policy.Watcher, error) {
	var pin policy.Hash
	if cfg.Genesis != "" {
		pin, _ = policy.ParseHash(cfg.Genesis) // checked by validate
	}
	w, err := policy.NewWatcher(policy.Options{Dir: cfg.path(cfg.PolicyDir), StateDir: cfg.path(cfg.StateDir),
		Genesis: pin, Logger: log, Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("relay policy (keys policy_dir, state_dir, genesis): %w", err)
	}
	if relayInPolicy(w.Current(), cfg.ID) {
		return w, nil
	}
	return nil, usagef("key id: relay %q is not listed in policy version %d", cfg.ID, w.Current().Version())
}

func relayInPolicy(p *policy.Policy, id string) bool {
	for _, r := range p.Relays() {
		if r.ID == id {
			return true
		}
	}
	return false
}

// relayAuthority builds the static policy from the config.
func relayAuthority(cfg *relayConfig) (relay.Authority, error) {
	p := relay.StaticPolicy{MemberCAs: map[string][]*x509.Certificate{}, AllowAll: cfg.Policy.AllowAll}
	load := func(key, file string) ([]*x509.Certificate, error) {
		b, err := os.ReadFile(cfg.path(file))
		if err != nil {
			return nil, usagef("key %s: %v", key, err)
		}
		cs, err := hsm.ParseCertificatesPEM(b)
		if err != nil || len(cs) == 0 {
			return nil, usagef("key %s: %s holds no PEM certificate (%v)", key, cfg.path(file), err)
		}
		return cs, nil
	}
	for m, mem := range cfg.Policy.Members {
		for _, f := range mem.CA {
			cs, err := load("policy.members."+m+".ca", f)
			if err != nil {
				return nil, err
			}
			p.MemberCAs[m] = append(p.MemberCAs[m], cs...)
		}
	}
	for _, f := range cfg.Policy.Revoked {
		cs, err := load("policy.revoked", f)
		if err != nil {
			return nil, err
		}
		p.Revoked = append(p.Revoked, cs...)
	}
	for _, pair := range cfg.Policy.Allow {
		p.Allow = append(p.Allow, [2]string{pair[0], pair[1]})
	}
	for _, r := range cfg.Policy.Relays {
		p.Relays = append(p.Relays, relay.RelayInfo{ID: r.ID, Addr: r.Addr, Pin: r.Pin})
	}
	a, err := relay.NewStaticAuthority(p)
	if err != nil {
		return nil, usagef("key policy: %v", err)
	}
	return a, nil
}

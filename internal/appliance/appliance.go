// Package appliance is the member appliance ('memberd run'): the identity
// folder (HSM keys), the signed policy (watched, applied live), the relay
// client, the WireGuard tunnel over it, the policy push service, the
// optional ledger node and the admin endpoint.
//
// Lifecycle: New checks the configuration and does nothing else; Run
// brings everything up in order (the admin endpoint first, so that an
// operator sees a member that waits for its HSM or a relay), serves until
// its context ends or Close is called, and takes everything down again;
// Close is idempotent.
package appliance

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/identity"
	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/authority"
	"github.com/memberd/memberd/internal/daemon"
	"github.com/memberd/memberd/internal/usage"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/push"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/tunnel"
)

// Deps is what an Appliance gets from its caller besides its Config.
type Deps struct {
	// Logger receives the appliance's logs; nil discards. Each subsystem
	// adds its component key, the appliance its member.
	Logger *slog.Logger
	// ProcSys is where the UDP buffer limits are read; "" = /proc/sys.
	ProcSys string
	// Getenv reads the environment (HTTPS_PROXY); nil = os.Getenv.
	Getenv func(string) string
}

// Appliance is one member appliance.
type Appliance struct {
	cfg     Config
	procSys string
	getenv  func(string) string
	base    *slog.Logger // with the member
	log     *slog.Logger // with component=appliance

	ready     chan struct{} // closed once everything is up
	closed    chan struct{} // closed by Close
	closeOnce sync.Once

	// Set by Run's start-up before ready is closed; immutable after.
	closers []func() // undone in reverse order when Run returns
	reg     *prometheus.Registry
	adm     *earlyAdmin
	admin   string // bound admin address
	idp     *identity.Provider
	watcher *policy.Watcher
	client  *relay.Client
	dev     *tunnel.Device
	pushLn  *tunnel.Listener
	ledger  *ledgerRun // nil without a ledger section
	hsm     *hsmHealth
	checks  map[string]admin.Check

	current   atomic.Pointer[policy.Policy] // the policy in force
	ledgerRef atomic.Pointer[ledgerRun]     // set once the ledger runs

	offerMu sync.Mutex           // guards offered
	offered []relay.PolicyBundle // the recent applied bundles, offered to relays
}

// New returns an appliance for cfg; it does no I/O and starts nothing.
// Errors are usage errors naming the key at fault.
func New(cfg Config, deps Deps) (*Appliance, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, usage.Errorf("appliance config: %v", err)
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Appliance{cfg: cfg, procSys: deps.ProcSys, getenv: deps.Getenv,
		ready: make(chan struct{}), closed: make(chan struct{})}
	if a.procSys == "" {
		a.procSys = "/proc/sys"
	}
	if a.getenv == nil {
		a.getenv = os.Getenv
	}
	// Each key once per line: the member is named here, and each subsystem
	// gets its component from base (slog's With appends, it never replaces);
	// the packages add no member or component key of their own.
	a.base = log.With("member", cfg.Member)
	a.log = a.base.With("component", "appliance")
	return a, nil
}

// Ready is closed once the appliance is up (the relays may still be
// connecting); the accessors below answer from then on.
func (a *Appliance) Ready() <-chan struct{} { return a.ready }

// Close stops Run; idempotent.
func (a *Appliance) Close() error {
	a.closeOnce.Do(func() { close(a.closed) })
	return nil
}

// Run runs the appliance until ctx ends or Close is called.
func (a *Appliance) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-a.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	defer a.undo()
	if err := a.start(ctx); err != nil {
		if ctx.Err() != nil { // stopped (ctx or Close) while starting: not a failure
			a.log.Info("appliance stopped during start-up", "step_error", err.Error())
			return nil
		}
		return err
	}
	close(a.ready)
	err := a.serve(ctx)
	a.log.Info("appliance stopped")
	return err
}

// onExit registers f to run when Run returns, before what was registered
// earlier.
func (a *Appliance) onExit(f func()) { a.closers = append(a.closers, f) }

func (a *Appliance) undo() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
}

// background runs run on a goroutine until Run returns, when stop (the
// part's Close) ends it, in undo's order, and Run waits for it. ctx's end
// does not end it: the tunnel must outlive what uses it (the ledger's
// overlay listeners are closed first). The channel gets run's result.
func (a *Appliance) background(ctx context.Context, run func(context.Context) error, stop func() error) <-chan error {
	errc := make(chan error, 1)
	done := make(chan struct{})
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer close(done)
		errc <- run(ctx)
	}()
	a.onExit(func() {
		stop()
		<-done
	})
	return errc
}

// start brings the appliance up, step by step, each step named on the
// start-up admin endpoint.
func (a *Appliance) start(ctx context.Context) error {
	cfg := &a.cfg
	daemon.WarnSmallUDPBuffers(a.log, a.procSys)
	warnIgnoredEnvProxy(a.log, cfg, a.getenv)
	// The admin endpoint comes first: /healthz, /readyz (not ready, with the
	// step) and /status answer while the identity, the policy and the relays
	// come up; the full handler replaces the start-up one in serveAdmin.
	a.reg = prometheus.NewRegistry()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	adm, err := listenEarlyAdmin(cfg.Admin, cfg.Member, a.reg)
	if err != nil {
		return err
	}
	a.adm, a.admin = adm, adm.Addr()
	a.onExit(adm.Close)
	if err := a.openIdentity(); err != nil {
		return err
	}
	adm.setStep("loading the policy")
	cur, err := a.openPolicy()
	if err != nil {
		return err
	}
	id := a.idp.Current()
	if err := a.connectRelays(ctx, cur); err != nil {
		return err
	}
	adm.setStep("starting the tunnel and the ledger")
	if err := a.startTunnel(ctx, id, cur); err != nil {
		return err
	}
	a.subscribePolicy(cur)
	if a.pushLn, err = a.dev.Listen(cfg.Tunnel.PushPort); err != nil {
		return fmt.Errorf("policy push service on overlay port %d (key tunnel.push_port): %w", cfg.Tunnel.PushPort, err)
	}
	a.onExit(func() { a.pushLn.Close() })
	if cfg.Ledger != nil {
		if a.ledger, err = startLedger(cfg, a.dev, id, a.current.Load, a.reg, a.base); err != nil {
			return err
		}
		// The ordering nodes run until the ledger closes (its servers
		// first, then the nodes), like the other background parts.
		a.background(ctx, a.ledger.reg.Run, a.ledger.Close)
		a.ledgerRef.Store(a.ledger)
		// A version applied between the subscription and now found no
		// ledger: apply it (a version the subscription applies too is
		// applied twice, harmlessly).
		a.ledger.catchUp(a.current.Load())
	}
	a.subscribeIdentity(id)
	a.hsm = newHSMHealth(func() crypto.Signer { return a.idp.Current().Signer }, a.reg, a.base.With("component", "hsm"))
	a.serveAdmin()
	a.log.Info("appliance running", "overlay_addr", a.dev.Addr().String(), "tunnel_mtu", a.dev.MTU(),
		"policy_version", cur.Version(), "policy_hash", cur.Hash().String(), "admin", a.admin,
		"push_port", cfg.Tunnel.PushPort, "certificate", id.File)
	return nil
}

// openIdentity opens the identity folder (and its HSM keys).
func (a *Appliance) openIdentity() error {
	cfg := &a.cfg
	if cfg.HSM.InsecureSoftKeys {
		a.log.Warn("INSECURE: hsm.insecure_soft_keys allows identity keys in files, for the demo and development only")
	}
	idp, err := identity.NewProvider(cfg.Path(cfg.Identity), &identity.Options{
		Keys: &hsm.Options{ModulePath: cfg.HSM.ModulePath, PoolSize: cfg.HSM.PoolSize,
			AllowSoftKeys: cfg.HSM.InsecureSoftKeys, SoftWarnings: io.Discard, Logger: a.base.With("component", "hsm")},
		Logger: a.base.With("component", "identity")})
	if err != nil {
		return fmt.Errorf("identity folder %s (key identity): %w", cfg.Path(cfg.Identity), err)
	}
	a.idp = idp
	a.onExit(func() { idp.Close() })
	return nil
}

// openPolicy loads the policy folder and checks this member and the
// relays against the policy in force, which it returns.
func (a *Appliance) openPolicy() (*policy.Policy, error) {
	cfg := &a.cfg
	w, err := policy.NewWatcher(policy.Options{Dir: cfg.Path(cfg.Policy.Dir), StateDir: cfg.Path(cfg.Policy.StateDir),
		Genesis: cfg.genesis, Logger: a.base.With("component", "policy"), Registerer: a.reg, ReloadOnSIGHUP: true,
		Check: ledgerPolicyCheck(cfg, &a.ledgerRef)})
	if err != nil {
		return nil, fmt.Errorf("policy (keys policy.dir, policy.state_dir, policy.genesis): %w", err)
	}
	a.watcher = w
	cur := w.Current()
	if cur.Member(cfg.Member) == nil {
		return nil, usage.Errorf("key member: %q is not a member of policy version %d (%s): check the member id", cfg.Member, cur.Version(), cur.Hash())
	}
	if len(authority.Relays(cur)) == 0 {
		return nil, fmt.Errorf("policy version %d lists no relay with a key pin: nothing to connect to", cur.Version())
	}
	return cur, nil
}

// connectRelays makes the relay client, runs it, offers it the policy and
// waits a moment for a first relay.
func (a *Appliance) connectRelays(ctx context.Context, cur *policy.Policy) error {
	cfg := &a.cfg
	// The relay client asks the identity folder at every (re)connection, so
	// a rotated certificate is used from the next connection on.
	cl, err := relay.NewClient(relay.ClientConfig{GetClientCertificate: a.idp.GetClientCertificate, Relays: authority.Relays(cur),
		QUICTimeout: cfg.Relay.QUICTimeout, ReprobeInterval: cfg.Relay.Reprobe, Proxy: cfg.proxy, NoEnvProxy: cfg.Relay.NoEnvProxy,
		Logger: a.base.With("component", "relay_client"), Registerer: a.reg})
	if err != nil {
		return fmt.Errorf("relay client: %w", err)
	}
	a.client = cl
	a.background(ctx, cl.Run, cl.Close)
	a.adm.client.Store(cl)
	a.offerPolicy(cur)
	// Key attestations are announced when the tunnel starts: give the relays
	// a moment first so that the first announcement is not lost (it repeats
	// every 30s anyway).
	a.adm.setStep(fmt.Sprintf("waiting for a first relay (at most %v; see relays)", relayWaitAtStart))
	wctx, wcancel := context.WithTimeout(ctx, relayWaitAtStart)
	defer wcancel()
	if err := cl.WaitReady(wctx); err != nil {
		a.log.Warn("no relay connected yet: the tunnel starts anyway and reaches members once a relay answers", "relays", cl.Status())
	}
	return nil
}

// offerPolicy: relays learn policy versions from their members, so offer
// the applied bundles (a few recent ones, for a relay that missed some) on
// every connection, and each new one as it is applied.
func (a *Appliance) offerPolicy(p *policy.Policy) {
	a.offerMu.Lock()
	defer a.offerMu.Unlock()
	a.offered = append(a.offered, relay.PolicyBundle{Version: p.Version(), Bundle: p.Marshal()})
	if len(a.offered) > relay.MaxOfferedPolicies {
		a.offered = a.offered[1:]
	}
	if err := a.client.OfferPolicy(a.offered); err != nil {
		a.log.Warn("cannot offer the applied policy to the relays", "policy_version", p.Version(), "err", err)
	}
}

// startTunnel brings the WireGuard tunnel up over the relay client and
// waits until it is up (its forwards bound).
func (a *Appliance) startTunnel(ctx context.Context, id *identity.Identity, cur *policy.Policy) error {
	cfg := &a.cfg
	tcfg := tunnel.Config{Member: cfg.Member, Signer: id.Signer,
		Chain:     append([]*x509.Certificate{id.Certificate}, id.Chain...),
		Transport: a.client, Authority: authority.Tunnel(cur), Logger: a.base.With("component", "tunnel"),
		RotateEvery: cfg.Tunnel.RotateEvery, Registerer: a.reg}
	for _, f := range cfg.Tunnel.Forwards {
		tcfg.Forwards = append(tcfg.Forwards, tunnel.Forward{Listen: f.Listen, Member: f.Member, Port: f.Port})
	}
	for _, s := range cfg.Tunnel.Services {
		tcfg.Services = append(tcfg.Services, tunnel.Service{Port: s.Port, Target: s.Target})
	}
	tcfg.MemberAddrs, _ = cfg.Tunnel.MemberAddrs.tunnel() // checked by Validate
	dev, err := tunnel.New(tcfg)
	if err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	a.dev = dev
	runErr := a.background(ctx, dev.Run, dev.Close) // Close closes the relay client too
	select {
	case <-dev.Ready():
		return nil
	case <-ctx.Done():
		return ctx.Err() // undo closes the device
	case err := <-runErr:
		if err == nil {
			err = tunnel.ErrClosed
		}
		return fmt.Errorf("tunnel: %w", err)
	}
}

// subscribePolicy applies every new policy version to the relay client,
// the tunnel and the ledger, live, from the one in force now.
func (a *Appliance) subscribePolicy(cur *policy.Policy) {
	a.current.Store(cur)
	now, cancel := a.watcher.Subscribe(func(old, new *policy.Policy, d *policy.Diff) {
		a.log.Info("policy applied", "policy_version", new.Version(), "policy_hash", new.Hash().String())
		a.applyPolicy(new)
		a.setTunnelIdentity(a.idp.Current())
		if l := a.ledgerRef.Load(); l != nil {
			l.channelsChanged(old, new) // channels added and dropped (ledger_live.go)
			l.policyChanged()           // the raft leader applies ledger.consenters
		}
	})
	a.onExit(cancel)
	if now != cur {
		a.applyPolicy(now)
	}
}

// applyPolicy hands p to the relay client and the tunnel.
func (a *Appliance) applyPolicy(p *policy.Policy) {
	a.current.Store(p)
	a.offerPolicy(p)
	a.dev.SetAuthority(authority.Tunnel(p))
	if ri := authority.Relays(p); len(ri) > 0 {
		if err := a.client.SetRelays(ri); err != nil {
			a.log.Error("policy relay list refused by the relay client: keeping the old relays", "policy_version", p.Version(), "err", err)
		}
	}
	if p.Member(a.cfg.Member) == nil {
		a.log.Error("this member is not in the applied policy any more: the tunnel carries nothing until it is re-admitted", "policy_version", p.Version())
	}
}

// setTunnelIdentity: the tunnel signs WireGuard key attestations with the
// identity folder's current identity, on every identity switch, and again
// on every policy change (a new certificate the old policy refused may be
// accepted now; the same identity is a no-op).
func (a *Appliance) setTunnelIdentity(id *identity.Identity) {
	if err := a.dev.SetIdentity(id.Signer, append([]*x509.Certificate{id.Certificate}, id.Chain...)); err != nil {
		a.log.Error("WireGuard key attestations keep the previous identity", "certificate", id.File, "err", err)
	}
}

// setLedgerIdentity: the ledger signs its next blocks and presents on new
// TLS handshakes the identity folder's current identity.
func (a *Appliance) setLedgerIdentity(id *identity.Identity) {
	if l := a.ledgerRef.Load(); l != nil {
		if err := l.setIdentity(id); err != nil {
			a.log.Error("the ledger keeps the previous identity", "certificate", id.File, "err", err)
		}
	}
}

// subscribeIdentity applies every identity switch to the tunnel and the
// ledger, live, from the identity they started with (Subscribe hands back
// the one in force now).
func (a *Appliance) subscribeIdentity(id *identity.Identity) {
	idNow, cancel := a.idp.Subscribe(a.identityChanged)
	a.onExit(cancel)
	if idNow != id {
		a.identityChanged(id, idNow)
	}
}

func (a *Appliance) identityChanged(old, new *identity.Identity) {
	// New relay connections use it (GetClientCertificate); the tunnel
	// re-signs and re-announces its WireGuard key attestations.
	a.log.Info("identity rotated: new relay connections, WireGuard key attestations and ledger blocks and TLS use the new certificate",
		"certificate", new.File, "serial", new.Certificate.SerialNumber.String(), "not_after", new.Certificate.NotAfter)
	a.setTunnelIdentity(new)
	a.setLedgerIdentity(new)
}

// serveAdmin switches the admin endpoint to the full handler.
func (a *Appliance) serveAdmin() {
	cfg := &a.cfg
	mux := http.NewServeMux()
	mux.Handle("/push", pushHandler(a, cfg.Path(cfg.Policy.Dir), cfg.Tunnel.PushPort, a.log))
	mux.Handle("/ping", pingHandler(a.dev))
	mux.Handle(TransferLeaderPath, transferLeaderHandler(a, a.log))
	a.checks = map[string]admin.Check{
		"relay": func(context.Context) error {
			for _, s := range a.client.Status() {
				if s.State == "up" {
					return nil
				}
			}
			return errors.New("no relay connected")
		},
		"policy_member": func(context.Context) error {
			if p := a.current.Load(); p.Member(cfg.Member) == nil {
				return fmt.Errorf("member %q is not in policy version %d", cfg.Member, p.Version())
			}
			return nil
		},
		"hsm": a.hsm.ready,
	}
	if a.ledger != nil {
		a.checks["ledger"] = a.ledger.ready
	}
	mux.Handle("/", admin.Handler(admin.Config{
		Gatherer: a.reg,
		Ready:    a.checks,
		Status:   func(context.Context) any { return applianceStatus(a) },
		Pprof:    cfg.AdminPprof,
	}))
	a.adm.ready(mux)
}

// serve runs every part until ctx ends or one fails.
func (a *Appliance) serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.idp.Run(gctx); err != nil && gctx.Err() == nil && !errors.Is(err, identity.ErrClosed) {
			return fmt.Errorf("identity folder: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := a.watcher.Run(gctx); err != nil && gctx.Err() == nil {
			return fmt.Errorf("policy watcher: %w", err)
		}
		return nil
	})
	policyDir := a.cfg.Path(a.cfg.Policy.Dir)
	g.Go(func() error { push.Serve(gctx, a.pushLn, policyDir, a.watcher, a.log); return nil })
	g.Go(func() error { a.hsm.run(gctx); return nil })
	g.Go(func() error { return daemon.NotifySystemd(gctx, a.log, applianceProbe(a, a.checks)) })
	if a.ledger != nil {
		g.Go(func() error { return a.ledger.serve(gctx) })
	}
	g.Go(func() error { return a.adm.wait(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		a.adm.Close()
		a.pushLn.Close()
		return nil
	})
	return g.Wait()
}

// relayWaitAtStart bounds how long startup waits for a first relay.
const relayWaitAtStart = 10 * time.Second

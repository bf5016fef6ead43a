package app

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
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/identity"
	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/tunnel"
)

func newRunCmd(e *env) *cobra.Command {
	var configPath, logFormat string
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the appliance (policy watcher, HSM identity, relay client, tunnel, admin endpoint)",
		Long: `Run the member appliance from memberd.yaml (see docs/appliance.md).

It loads the HSM identity folder, applies the signed policy from the policy
folder (live, on every new valid version), connects to every relay of the
policy (QUIC, else TLS over TCP, optionally through an HTTP CONNECT proxy),
brings up the WireGuard tunnel over them, serves policy pushes from other
members on the overlay push port, and the admin endpoint
(/metrics /healthz /readyz /status, POST /push, GET /ping).

SIGINT/SIGTERM stop it gracefully; SIGHUP re-reads the policy folder.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(e.stderr, logFormat)
			if err != nil {
				return err
			}
			cfg, err := loadRunConfig(configPath)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			ee := *e
			ee.log = log
			applyMemoryLimit(log, cfg)
			return runAppliance(ctx, &ee, cfg, nil)
		},
	}
	c.Flags().StringVar(&configPath, "config", "/etc/memberd/memberd.yaml", "appliance configuration file (YAML)")
	c.Flags().StringVar(&logFormat, "log-format", "auto", "log format: json, text, or auto (JSON unless stderr is a terminal)")
	return c
}

// newLogger makes the process logger: JSON when asked or when w is not a
// terminal (systemd, containers), text otherwise.
func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	switch format {
	case "json":
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	case "auto", "":
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				return slog.New(slog.NewTextHandler(w, nil)), nil
			}
		}
	default:
		return nil, usagef("--log-format: %q is not json, text or auto", format)
	}
	return slog.New(slog.NewJSONHandler(w, nil)), nil
}

// appliance is a running appliance, handed to tests and the demo through
// runAppliance's started channel.
type appliance struct {
	member   string
	admin    string // bound admin address
	dev      *tunnel.Device
	client   *relay.Client
	policy   func() *policy.Policy
	identity func() *identity.Identity
	ledger   *ledgerRun // nil without a ledger section
	procSys  string     // where /status reads the UDP buffer limits: /proc/sys
	hsm      *hsmHealth // nil in tests that build an appliance by hand
}

// runAppliance runs one appliance until ctx ends. started, if set, receives
// the running appliance once everything is up (the relays may still be
// connecting).
func runAppliance(ctx context.Context, e *env, cfg *runConfig, started chan<- *appliance) (err error) {
	// Each key once per line: the member is named here, and each subsystem
	// gets its component from base (slog's With appends, it never replaces);
	// the packages add no member or component key of their own.
	base := e.log.With("member", cfg.Member)
	log := base.With("component", "appliance")
	warnSmallUDPBuffers(log, "/proc/sys")
	warnIgnoredEnvProxy(log, cfg, os.Getenv)
	// The admin endpoint comes first: /healthz, /readyz (not ready, with the
	// step) and /status answer while the identity, the policy and the relays
	// come up; the full handler replaces the start-up one below.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	adm, err := listenEarlyAdmin(cfg.Admin, cfg.Member, reg)
	if err != nil {
		return err
	}
	defer adm.Close()
	if cfg.HSM.InsecureSoftKeys {
		log.Warn("INSECURE: hsm.insecure_soft_keys allows identity keys in files, for the demo and development only")
	}
	idp, err := identity.NewProvider(cfg.path(cfg.Identity), &identity.Options{
		Keys: &hsm.Options{ModulePath: cfg.HSM.ModulePath, PoolSize: cfg.HSM.PoolSize,
			AllowSoftKeys: cfg.HSM.InsecureSoftKeys, SoftWarnings: io.Discard, Logger: base.With("component", "hsm")},
		Logger: base.With("component", "identity")})
	if err != nil {
		return fmt.Errorf("identity folder %s (key identity): %w", cfg.path(cfg.Identity), err)
	}
	defer idp.Close()

	adm.setStep("loading the policy")
	var ledgerRef atomic.Pointer[ledgerRun] // set once the ledger runs
	w, err := policy.NewWatcher(policy.Options{Dir: cfg.path(cfg.Policy.Dir), StateDir: cfg.path(cfg.Policy.StateDir),
		Genesis: cfg.genesis, Logger: base.With("component", "policy"), Registerer: reg, ReloadOnSIGHUP: true,
		Check: ledgerPolicyCheck(cfg, &ledgerRef)})
	if err != nil {
		return fmt.Errorf("policy (keys policy.dir, policy.state_dir, policy.genesis): %w", err)
	}
	cur := w.Current()
	if cur.Member(cfg.Member) == nil {
		return usagef("key member: %q is not a member of policy version %d (%s): check the member id", cfg.Member, cur.Version(), cur.Hash())
	}
	relays := relayInfos(cur)
	if len(relays) == 0 {
		return fmt.Errorf("policy version %d lists no relay with a key pin: nothing to connect to", cur.Version())
	}

	id := idp.Current()
	// The relay client asks the identity folder at every (re)connection, so
	// a rotated certificate is used from the next connection on.
	cl, err := relay.NewClient(relay.ClientConfig{GetClientCertificate: idp.GetClientCertificate, Relays: relays,
		QUICTimeout: cfg.Relay.QUICTimeout, ReprobeInterval: cfg.Relay.Reprobe, Proxy: cfg.proxy, NoEnvProxy: cfg.Relay.NoEnvProxy,
		Logger: base.With("component", "relay_client"), Registerer: reg})
	if err != nil {
		return fmt.Errorf("relay client: %w", err)
	}
	adm.client.Store(cl)
	// Relays learn policy versions from their members: offer the applied
	// bundles (a few recent ones, for a relay that missed some) on every
	// connection, and each new one as it is applied.
	var offered []relay.PolicyBundle
	offerPolicy := func(p *policy.Policy) {
		offered = append(offered, relay.PolicyBundle{Version: p.Version(), Bundle: p.Marshal()})
		if len(offered) > relay.MaxOfferedPolicies {
			offered = offered[1:]
		}
		if err := cl.OfferPolicy(offered); err != nil {
			log.Warn("cannot offer the applied policy to the relays", "policy_version", p.Version(), "err", err)
		}
	}
	offerPolicy(cur)
	// Key attestations are announced when the tunnel starts: give the relays
	// a moment first so that the first announcement is not lost (it repeats
	// every 30s anyway).
	adm.setStep(fmt.Sprintf("waiting for a first relay (at most %v; see relays)", relayWaitAtStart))
	wctx, wcancel := context.WithTimeout(ctx, relayWaitAtStart)
	if err := cl.WaitReady(wctx); err != nil {
		log.Warn("no relay connected yet: the tunnel starts anyway and reaches members once a relay answers", "relays", cl.Status())
	}
	wcancel()
	tcfg := tunnel.Config{Member: cfg.Member, Signer: id.Signer,
		Chain:     append([]*x509.Certificate{id.Certificate}, id.Chain...),
		Transport: cl, Authority: PolicyTunnelAuthority(cur), Logger: base.With("component", "tunnel"),
		RotateEvery: cfg.Tunnel.RotateEvery, Registerer: reg}
	for _, f := range cfg.Tunnel.Forwards {
		tcfg.Forwards = append(tcfg.Forwards, tunnel.Forward{Listen: f.Listen, Member: f.Member, Port: f.Port})
	}
	for _, s := range cfg.Tunnel.Services {
		tcfg.Services = append(tcfg.Services, tunnel.Service{Port: s.Port, Target: s.Target})
	}
	tcfg.MemberAddrs, _ = cfg.Tunnel.MemberAddrs.tunnel() // checked in loadRunConfig
	adm.setStep("starting the tunnel and the ledger")
	dev, err := tunnel.New(tcfg)
	if err != nil {
		cl.Close()
		return fmt.Errorf("tunnel: %w", err)
	}
	defer dev.Close() // closes the relay client too

	// Policy → relay client and tunnel, live.
	var current atomic.Pointer[policy.Policy]
	apply := func(p *policy.Policy) {
		current.Store(p)
		offerPolicy(p)
		dev.SetAuthority(PolicyTunnelAuthority(p))
		if ri := relayInfos(p); len(ri) > 0 {
			if err := cl.SetRelays(ri); err != nil {
				log.Error("policy relay list refused by the relay client: keeping the old relays", "policy_version", p.Version(), "err", err)
			}
		}
		if p.Member(cfg.Member) == nil {
			log.Error("this member is not in the applied policy any more: the tunnel carries nothing until it is re-admitted", "policy_version", p.Version())
		}
	}
	current.Store(cur)
	// The tunnel signs WireGuard key attestations with the identity folder's
	// current identity: on every identity switch, and again on every policy
	// change (a new certificate the old policy refused may be accepted now;
	// the same identity is a no-op).
	setTunnelIdentity := func(id *identity.Identity) {
		if err := dev.SetIdentity(id.Signer, append([]*x509.Certificate{id.Certificate}, id.Chain...)); err != nil {
			log.Error("WireGuard key attestations keep the previous identity", "certificate", id.File, "err", err)
		}
	}
	now, cancelSub := w.Subscribe(func(old, new *policy.Policy, d *policy.Diff) {
		log.Info("policy applied", "policy_version", new.Version(), "policy_hash", new.Hash().String())
		apply(new)
		setTunnelIdentity(idp.Current())
		if l := ledgerRef.Load(); l != nil {
			l.policyChanged() // the raft leader applies ledger.consenters
		}
	})
	defer cancelSub()
	if now != cur {
		apply(now)
	}
	// The ledger (started below) signs its next blocks and presents on new
	// TLS handshakes the identity folder's current identity.
	setLedgerIdentity := func(id *identity.Identity) {
		if l := ledgerRef.Load(); l != nil {
			if err := l.setIdentity(id); err != nil {
				log.Error("the ledger keeps the previous identity", "certificate", id.File, "err", err)
			}
		}
	}

	pushLn, err := dev.Listen(cfg.Tunnel.PushPort)
	if err != nil {
		return fmt.Errorf("policy push service on overlay port %d (key tunnel.push_port): %w", cfg.Tunnel.PushPort, err)
	}
	policyDir := cfg.path(cfg.Policy.Dir)

	var led *ledgerRun
	if cfg.Ledger != nil {
		if led, err = startLedger(cfg, dev, id, current.Load, reg, base); err != nil {
			pushLn.Close()
			return err
		}
		defer led.Close()
		ledgerRef.Store(led)
	}
	// Identity → tunnel and ledger, live, from the identity they started
	// with: Subscribe hands back the one in force now.
	onIdentity := func(old, new *identity.Identity) {
		// New relay connections use it (GetClientCertificate); the tunnel
		// re-signs and re-announces its WireGuard key attestations.
		log.Info("identity rotated: new relay connections, WireGuard key attestations and ledger blocks and TLS use the new certificate",
			"certificate", new.File, "serial", new.Certificate.SerialNumber.String(), "not_after", new.Certificate.NotAfter)
		setTunnelIdentity(new)
		setLedgerIdentity(new)
	}
	idNow, cancelID := idp.Subscribe(onIdentity)
	defer cancelID()
	if idNow != id {
		onIdentity(id, idNow)
	}

	hh := newHSMHealth(func() crypto.Signer { return idp.Current().Signer }, reg, base.With("component", "hsm"))
	a := &appliance{member: cfg.Member, admin: adm.Addr(), dev: dev, client: cl, policy: current.Load, identity: idp.Current, ledger: led, procSys: "/proc/sys", hsm: hh}
	mux := http.NewServeMux()
	mux.Handle("/push", pushHandler(a, policyDir, cfg.Tunnel.PushPort, log))
	mux.Handle("/ping", pingHandler(dev))
	ready := map[string]admin.Check{
		"relay": func(context.Context) error {
			for _, s := range cl.Status() {
				if s.State == "up" {
					return nil
				}
			}
			return errors.New("no relay connected")
		},
		"policy_member": func(context.Context) error {
			if p := current.Load(); p.Member(cfg.Member) == nil {
				return fmt.Errorf("member %q is not in policy version %d", cfg.Member, p.Version())
			}
			return nil
		},
	}
	if led != nil {
		ready["ledger"] = led.ready
	}
	ready["hsm"] = hh.ready
	mux.Handle("/", admin.Handler(admin.Config{
		Gatherer: reg,
		Ready:    ready,
		Status:   func(context.Context) any { return applianceStatus(a) },
		Pprof:    cfg.AdminPprof,
	}))
	adm.ready(mux)

	log.Info("appliance running", "overlay_addr", dev.Addr().String(), "tunnel_mtu", dev.MTU(),
		"policy_version", cur.Version(), "policy_hash", cur.Hash().String(), "admin", a.admin,
		"push_port", cfg.Tunnel.PushPort, "certificate", id.File)
	if started != nil {
		started <- a
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := idp.Run(gctx); err != nil && gctx.Err() == nil && !errors.Is(err, identity.ErrClosed) {
			return fmt.Errorf("identity folder: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := w.Run(gctx); err != nil && gctx.Err() == nil {
			return fmt.Errorf("policy watcher: %w", err)
		}
		return nil
	})
	g.Go(func() error { servePush(gctx, pushLn, policyDir, log); return nil })
	g.Go(func() error { hh.run(gctx); return nil })
	g.Go(func() error { return notifySystemd(gctx, log, applianceProbe(a, ready)) })
	if led != nil {
		g.Go(func() error { return led.serve(gctx) })
	}
	g.Go(func() error { return adm.wait(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		adm.Close()
		pushLn.Close()
		return nil
	})
	err = g.Wait()
	log.Info("appliance stopped")
	return err
}

// relayWaitAtStart bounds how long startup waits for a first relay.
const relayWaitAtStart = 10 * time.Second

// relayInfos lists the relays of a policy the client can dial (with a pin).
func relayInfos(p *policy.Policy) []relay.RelayInfo {
	return policyRelayAuthority{p: p}.Relays()
}

// applianceStatus is the /status document.
func applianceStatus(a *appliance) map[string]any {
	p := a.policy()
	peers := []map[string]any{}
	maddrs := a.dev.MemberAddrs() // tunnel.member_addresses; empty without
	for _, ps := range a.dev.Peers() {
		peer := map[string]any{"member": ps.Member, "addr": ps.Addr.String(),
			"key": ps.PublicKey.String(), "attestation_expiry": ps.Expiry, "rotating": !ps.PendingKey.IsZero(),
			"last_handshake": lastHandshake(ps.LastHandshake), "certificate_serial": certSerial(ps.Certificate)}
		if ma, ok := maddrs[ps.Member]; ok {
			peer["member_addr"] = ma.String()
		}
		peers = append(peers, peer)
	}
	st := a.dev.Stats()
	id := a.identity()
	relays := a.client.Status()
	led := a.ledger.status()
	warnings := udpBufferWarnings(a.procSys)
	if w := certificateWarning("identity certificate "+id.File, id.Certificate, time.Now(), renewIdentity); w != "" {
		warnings = append(warnings, w)
	}
	if p.Member(a.member) == nil {
		warnings = append(warnings, fmt.Sprintf("member %q is not in the applied policy version %d: the tunnel carries nothing until a policy re-admits it", a.member, p.Version()))
	}
	warnings = append(warnings, relayWarnings(relays)...)
	warnings = append(warnings, ledgerWarnings(led)...)
	var hsmDoc map[string]any
	if a.hsm != nil {
		hsmDoc = a.hsm.status()
		if e, ok := hsmDoc["error"].(string); ok {
			warnings = append(warnings, "the identity key in the HSM cannot sign: "+e)
		}
	}
	return map[string]any{
		"hsm":      hsmDoc,
		"role":     "appliance",
		"member":   a.member,
		"warnings": append([]string{}, warnings...), // [] rather than null
		"policy":   map[string]any{"version": p.Version(), "hash": p.Hash().String(), "consortium": p.Consortium()},
		"relays":   relays,
		"identity": map[string]any{"file": id.File, "subject": id.Certificate.Subject.String(),
			"serial": id.Certificate.SerialNumber.String(), "not_after": id.Certificate.NotAfter},
		"tunnel": map[string]any{"addr": a.dev.Addr().String(), "mtu": a.dev.MTU(), "peers": peers,
			"attestations_accepted": st.AttestationsAccepted, "attestations_refused": st.AttestationsRefused,
			"acl_denied": st.ACLDenied, "rotations": st.Rotations, "identity_changes": st.IdentityChanges,
			"certificate_serial": certSerial(a.dev.Identity()),
			"packets_in":         st.PacketsIn, "packets_out": st.PacketsOut, "bytes_in": st.BytesIn, "bytes_out": st.BytesOut},
		"relay_drops": a.client.Drops(),
		"ledger":      led,
	}
}

// lastHandshake is a peer's last WireGuard handshake for /status: RFC 3339,
// or "" when none completed yet.
func lastHandshake(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func certSerial(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return c.SerialNumber.String()
}

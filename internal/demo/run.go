package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/internal/relayd"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/push"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/tunnel"
)

// EchoPort is the overlay port the demo's echo service listens on
// (inside the 7050-7059 range the demo policy allows).
const EchoPort = 7059

// Consortium is a demo consortium running in this process: the relays
// and appliances of a Layout, each exactly as 'memberd relay' and
// 'memberd run' run them. Whole-consortium tests drive it too.
type Consortium struct {
	Layout *Layout

	mu         sync.Mutex
	appliances map[string]*appliance.Appliance
	relays     map[string]*demoProc
	members    map[string]*demoProc
	log        *slog.Logger
	stderr     io.Writer
	hook       func(relay, from, to string, payload []byte)
	gate       <-chan struct{}
}

// RunOptions tune Start. The zero value is what 'memberd demo' uses.
type RunOptions struct {
	// Logger receives every component's logs; nil discards.
	Logger *slog.Logger
	// ForwardHook, when set, sees every payload each relay forwards (for
	// tests: the relay must only ever see ciphertext).
	ForwardHook func(relay, from, to string, payload []byte)
	// QUICGate, when set, keeps every relay's QUIC (UDP) listener off
	// until it is closed: as if UDP were blocked, then unblocked.
	QUICGate <-chan struct{}
}

type demoProc struct {
	cancel context.CancelFunc
	done   chan error
	addr   string // relay listen address or appliance admin address
}

// Start starts every relay and appliance of L. log nil discards. Stop
// ends them.
func Start(ctx context.Context, L *Layout, o *RunOptions) (*Consortium, error) {
	if o == nil {
		o = &RunOptions{}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Consortium{Layout: L, appliances: map[string]*appliance.Appliance{}, relays: map[string]*demoProc{},
		members: map[string]*demoProc{}, log: log, stderr: io.Discard, hook: o.ForwardHook, gate: o.QUICGate}
	for _, id := range L.Relays {
		if err := d.StartRelay(ctx, id); err != nil {
			d.Stop()
			return nil, err
		}
	}
	for _, id := range L.Members {
		if err := d.StartMember(ctx, id); err != nil {
			d.Stop()
			return nil, err
		}
	}
	return d, nil
}

// StartRelay starts (or restarts) relay id.
func (d *Consortium) StartRelay(ctx context.Context, id string) error {
	cfg, err := relayd.LoadConfig(d.Layout.RelayConfig[id])
	if err != nil {
		return err
	}
	cfg.QUICGate = d.gate
	if h := d.hook; h != nil {
		cfg.ForwardHook = func(from, to string, p []byte) { h(id, from, to, p) }
	}
	r, err := relayd.New(*cfg, relayd.Deps{Logger: d.log, Source: d.Layout.RelayConfig[id]})
	if err != nil {
		return fmt.Errorf("demo relay %s: %w", id, err)
	}
	p, err := startProc(ctx, r.Run, r.Ready())
	if p != nil {
		p.addr = r.Addr()
	}
	if err != nil {
		return fmt.Errorf("demo relay %s: %w", id, err)
	}
	d.mu.Lock()
	d.relays[id] = p
	d.mu.Unlock()
	return nil
}

// StartMember starts (or restarts) the appliance of member id.
func (d *Consortium) StartMember(ctx context.Context, id string) error {
	cfg, err := appliance.LoadConfig(d.Layout.MemberConfig[id])
	if err != nil {
		return err
	}
	a, err := appliance.New(*cfg, appliance.Deps{Logger: d.log})
	if err != nil {
		return fmt.Errorf("demo member %s: %w", id, err)
	}
	p, err := startProc(ctx, a.Run, a.Ready())
	if p != nil {
		p.addr = a.AdminAddr()
	}
	if err != nil {
		return fmt.Errorf("demo member %s: %w", id, err)
	}
	d.mu.Lock()
	d.members[id] = p
	d.appliances[id] = a
	d.mu.Unlock()
	return nil
}

// startProc runs run until its context ends and waits until ready is
// closed (up) or run returns (failed).
func startProc(ctx context.Context, run func(context.Context) error, ready <-chan struct{}) (*demoProc, error) {
	ctx, cancel := context.WithCancel(ctx)
	p := &demoProc{cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- run(ctx) }()
	select {
	case <-ready:
		return p, nil
	case err := <-p.done:
		cancel()
		if err == nil {
			err = errors.New("stopped before it was up")
		}
		return nil, err
	}
}

// StopRelay stops relay id (as if its host died) and waits for it.
func (d *Consortium) StopRelay(id string) error {
	d.mu.Lock()
	p := d.relays[id]
	delete(d.relays, id)
	d.mu.Unlock()
	if p == nil {
		return fmt.Errorf("demo: relay %s is not running", id)
	}
	p.cancel()
	return <-p.done
}

// StopMember stops the appliance of member id and waits for it.
func (d *Consortium) StopMember(id string) error {
	d.mu.Lock()
	p := d.members[id]
	delete(d.members, id)
	delete(d.appliances, id)
	d.mu.Unlock()
	if p == nil {
		return fmt.Errorf("demo: member %s is not running", id)
	}
	p.cancel()
	return <-p.done
}

// Stop stops everything (appliances first) and returns the first error.
func (d *Consortium) Stop() error {
	var first error
	d.mu.Lock()
	ms := keys(d.members)
	rs := keys(d.relays)
	d.mu.Unlock()
	for _, id := range ms {
		if err := d.StopMember(id); err != nil && first == nil {
			first = err
		}
	}
	for _, id := range rs {
		if err := d.StopRelay(id); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Device is the tunnel of a running member (nil if not running).
func (d *Consortium) Device(member string) *tunnel.Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a := d.appliances[member]; a != nil {
		return a.Device()
	}
	return nil
}

// RelayStatus is the relay client's view of a running member.
func (d *Consortium) RelayStatus(member string) []relay.RelayStatus {
	d.mu.Lock()
	a := d.appliances[member]
	d.mu.Unlock()
	if a == nil {
		return nil
	}
	return a.RelayClient().Status()
}

// IdentitySerial is the serial number of the identity certificate a
// running member uses now ("" if not running).
func (d *Consortium) IdentitySerial(member string) string {
	d.mu.Lock()
	a := d.appliances[member]
	d.mu.Unlock()
	if a == nil {
		return ""
	}
	return a.Identity().Certificate.SerialNumber.String()
}

// AdminAddr is the admin endpoint of a running member.
func (d *Consortium) AdminAddr(member string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.members[member]; p != nil {
		return p.addr
	}
	return ""
}

// PolicyVersion is the policy version a running member applied (0 if not
// running).
func (d *Consortium) PolicyVersion(member string) uint64 {
	d.mu.Lock()
	a := d.appliances[member]
	d.mu.Unlock()
	if a == nil {
		return 0
	}
	return a.Policy().Version()
}

// RelayPolicyVersion is the policy version relay id applied last, from its
// state folder (0 if none or unreadable; the relay need not be running).
func (d *Consortium) RelayPolicyVersion(id string) uint64 {
	cfg, err := relayd.LoadConfig(d.Layout.RelayConfig[id])
	if err != nil || cfg.StateDir == "" {
		return 0
	}
	p, err := policy.LoadState(cfg.Path(cfg.StateDir))
	if err != nil || p == nil {
		return 0
	}
	return p.Version()
}

// WaitConnected waits until every running member has a connection up to
// every running relay.
func (d *Consortium) WaitConnected(ctx context.Context) error {
	for {
		missing := ""
		d.mu.Lock()
		for _, m := range keys(d.appliances) {
			up := map[string]bool{}
			for _, s := range d.appliances[m].RelayClient().Status() {
				up[s.ID] = s.State == "up"
			}
			for _, r := range keys(d.relays) {
				if !up[r] {
					missing = m + "→" + r
				}
			}
		}
		d.mu.Unlock()
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: %s not connected: %w", missing, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Check is one member→member echo through the tunnel.
type Check struct {
	From, To string
	Path     relay.Path    // path of From's active relay
	Relay    string        // From's active relay
	RTT      time.Duration // one echo round trip through the tunnel
	Err      error
}

// CheckAll makes every member echo through every other member's echo
// service on port (each member must serve it: ServeEcho).
func (d *Consortium) CheckAll(ctx context.Context, port uint16) []Check {
	var out []Check
	for _, from := range d.Layout.Members {
		for _, to := range d.Layout.Members {
			if from == to {
				continue
			}
			c := Check{From: from, To: to}
			dev := d.Device(from)
			if dev == nil {
				c.Err = errors.New("not running")
				out = append(out, c)
				continue
			}
			for _, s := range d.RelayStatus(from) {
				if s.Active {
					c.Path, c.Relay = s.Path, s.ID
				}
			}
			c.RTT, c.Err = echoOnce(ctx, dev, to, port)
			out = append(out, c)
		}
	}
	return out
}

func echoOnce(ctx context.Context, dev *tunnel.Device, to string, port uint16) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := dev.Dial(ctx, to, port)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	msg := []byte("memberd demo ping\n")
	buf := make([]byte, len(msg))
	var best time.Duration
	for i := range 5 {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, err
		}
		if rtt := time.Since(t0); i == 0 || rtt < best {
			best = rtt
		}
		if string(buf) != string(msg) {
			return 0, fmt.Errorf("echo from %s returned %q", to, buf)
		}
	}
	return best, nil
}

// ServeEcho makes every running member echo TCP connections on overlay
// port until ctx ends.
func (d *Consortium) ServeEcho(ctx context.Context, port uint16) error {
	for _, m := range d.Layout.Members {
		dev := d.Device(m)
		if dev == nil {
			continue
		}
		ln, err := dev.Listen(port)
		if err != nil {
			return fmt.Errorf("demo: echo on %s:%d: %w", m, port, err)
		}
		go func() { <-ctx.Done(); ln.Close() }()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
	}
	return nil
}

// PushResult is one member's outcome of a policy push.
type PushResult = push.Result

// PushPolicy pushes bundle as 'memberd policy push --admin' to the
// appliance of member does: into its folder, then to every other member
// through the tunnel.
func (d *Consortium) PushPolicy(ctx context.Context, member string, bundle []byte) ([]PushResult, error) {
	addr := d.AdminAddr(member)
	if addr == "" {
		return nil, fmt.Errorf("demo: member %s is not running", member)
	}
	return appliance.PushViaAdmin(ctx, addr, bundle)
}

// DropRelayPolicy writes bundle into every relay's policy folder, as a
// relay operator does.
func (d *Consortium) DropRelayPolicy(bundle []byte) error {
	for _, id := range d.Layout.Relays {
		cfg, err := relayd.LoadConfig(d.Layout.RelayConfig[id])
		if err != nil {
			return err
		}
		if _, err := push.Store(cfg.Path(cfg.PolicyDir), bundle); err != nil {
			return fmt.Errorf("demo relay %s: %w", id, err)
		}
	}
	return nil
}

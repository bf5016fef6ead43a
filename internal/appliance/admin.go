package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/relay"
)

// earlyAdmin is the appliance's admin endpoint from the first moment of
// start-up: it listens before the identity, the policy and the relays are
// up, so that an operator and a health checker can see a member that waits
// for a relay (up to relayWaitAtStart) or is slow to open its HSM, instead
// of a refused connection.
//
// Until ready hands it the full handler, it serves /healthz (ok: the
// process lives), /readyz 503 naming the start-up step, /status a small
// document {role: appliance-starting, member, starting, relays} and
// /metrics; /push and /ping answer 503.
type earlyAdmin struct {
	ln      net.Listener
	srv     *http.Server
	served  chan error // Serve's result, once
	member  string
	step    atomic.Pointer[string]
	client  atomic.Pointer[relay.Client] // set once the relay client exists
	handler atomic.Pointer[http.Handler] // the full handler once ready
}

// errStarting is what /readyz and /push, /ping say during start-up.
var errStarting = errors.New("the appliance is starting")

// listenEarlyAdmin listens on addr and serves at once.
func listenEarlyAdmin(addr, member string, reg prometheus.Gatherer) (*earlyAdmin, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint on %s (key admin): %w", addr, err)
	}
	a := &earlyAdmin{ln: ln, member: member, served: make(chan error, 1)}
	a.setStep("opening the identity folder")
	starting := http.NewServeMux()
	busy := func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, fmt.Sprintf("%v: %s; try again in a few seconds", errStarting, *a.step.Load()), http.StatusServiceUnavailable)
	}
	starting.HandleFunc("/push", busy)
	starting.HandleFunc("/ping", busy)
	starting.HandleFunc(TransferLeaderPath, busy)
	starting.Handle("/", admin.Handler(admin.Config{
		Gatherer: reg,
		Ready: map[string]admin.Check{"startup": func(context.Context) error {
			return fmt.Errorf("%w: %s", errStarting, *a.step.Load())
		}},
		Status: func(context.Context) any { return a.status() },
	}))
	var h http.Handler = starting
	a.handler.Store(&h)
	a.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*a.handler.Load()).ServeHTTP(w, r) })}
	go func() { a.served <- a.srv.Serve(ln) }()
	return a, nil
}

func (a *earlyAdmin) setStep(s string) { a.step.Store(&s) }

// status is the /status document during start-up.
func (a *earlyAdmin) status() map[string]any {
	doc := map[string]any{"role": "appliance-starting", "member": a.member, "starting": *a.step.Load()}
	if cl := a.client.Load(); cl != nil {
		doc["relays"] = cl.Status()
	}
	return doc
}

// ready switches to the full handler.
func (a *earlyAdmin) ready(h http.Handler) { a.handler.Store(&h) }

// Addr is the bound address.
func (a *earlyAdmin) Addr() string { return a.ln.Addr().String() }

// wait returns when the server stops: nil after Close, else why it failed.
func (a *earlyAdmin) wait(ctx context.Context) error {
	select {
	case err := <-a.served:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("admin endpoint: %w", err)
	case <-ctx.Done():
		return nil
	}
}

// Close stops serving (open requests get 2 s). It is idempotent.
func (a *earlyAdmin) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
}

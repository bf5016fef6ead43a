// Package admin serves the appliance's and the relay's local admin endpoint:
// Prometheus metrics, liveness, readiness and a JSON status document.
//
//	GET /metrics  Prometheus text format, from the Gatherer in Config
//	GET /healthz  200 "ok" while the process serves requests
//	GET /readyz   200 when every readiness check passes, else 503 naming each failing check
//	GET /status   the JSON document returned by Config.Status
//	/debug/pprof/ Go's net/http/pprof handlers, only with Config.Pprof, which
//	              the configs allow only on a loopback address (CheckPprof)
//
// The handler owns no socket: cmd listens (default 127.0.0.1:9464) and serves it.
package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where the admin endpoint listens unless configured otherwise.
// It is loopback only: metrics and status name members and relays.
const DefaultAddr = "127.0.0.1:9464"

// Check reports whether one part of the process is ready; a nil error means ready.
type Check func(ctx context.Context) error

// Config says what the admin endpoint serves. The zero value serves
// /healthz, an always-ready /readyz, an empty /status and no /metrics.
type Config struct {
	// Gatherer supplies /metrics; nil disables /metrics (404).
	Gatherer prometheus.Gatherer
	// Ready holds the named readiness checks of /readyz.
	Ready map[string]Check
	// Status returns the document served at /status; nil serves {}.
	Status func(ctx context.Context) any
	// Pprof serves Go's profiling handlers under /debug/pprof/ (heap,
	// goroutine, profile, trace, ...). Default false: 404. They show the
	// process's memory and command line and can make it busy for the
	// length of a profile: serve them only on a loopback address.
	Pprof bool
}

// CheckPprof returns an error if pprof is enabled while addr (the admin
// endpoint's host:port) is not a loopback address. key names the config
// key that enables pprof, for the message.
func CheckPprof(key string, pprof bool, addr string) error {
	if !pprof {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("key %s: the admin address %q is not host:port", key, addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("key %s: pprof is served only on a loopback admin address, not %q: "+
		"set admin to 127.0.0.1:PORT (reach it remotely through ssh -L) or set %s: false", key, addr, key)
}

// Handler returns the admin HTTP handler for cfg.
func Handler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		names := make([]string, 0, len(cfg.Ready))
		for n := range cfg.Ready {
			names = append(names, n)
		}
		sort.Strings(names)
		var failed []string
		for _, n := range names {
			if err := cfg.Ready[n](r.Context()); err != nil {
				failed = append(failed, n+": "+err.Error())
			}
		}
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:\n"+strings.Join(failed, "\n"))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		var doc any = struct{}{}
		if cfg.Status != nil {
			doc = cfg.Status(r.Context())
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(doc)
	})
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	if cfg.Pprof {
		// Index also serves the named profiles: /debug/pprof/heap, ...
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

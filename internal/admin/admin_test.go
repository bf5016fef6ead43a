package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "memberd_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	relayUp := errors.New("no relay connected")
	h := Handler(Config{
		Gatherer: reg,
		Ready: map[string]Check{
			"policy": func(context.Context) error { return nil },
			"relay":  func(context.Context) error { return relayUp },
		},
		Status: func(context.Context) any { return map[string]int{"policy_version": 7} },
	})
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 503, "relay: no relay connected"},
		{"/status", 200, `"policy_version": 7`},
		{"/metrics", 200, "memberd_test_total 3"},
		{"/nope", 404, ""},
	} {
		code, body := get(t, h, tc.path)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.want)
		}
	}
	relayUp = nil
	if code, body := get(t, h, "/readyz"); code != 200 {
		t.Errorf("/readyz after recovery = %d %q", code, body)
	}
}

func TestZeroConfig(t *testing.T) {
	h := Handler(Config{})
	if code, _ := get(t, h, "/metrics"); code != 404 {
		t.Errorf("/metrics without gatherer = %d, want 404", code)
	}
	if code, body := get(t, h, "/status"); code != 200 || strings.TrimSpace(body) != "{}" {
		t.Errorf("/status zero = %d %q", code, body)
	}
	if code, _ := get(t, h, "/readyz"); code != 200 {
		t.Errorf("/readyz zero = %d", code)
	}
}

// TestPprof: the profiling handlers exist only when enabled.
func TestPprof(t *testing.T) {
	if code, _ := get(t, Handler(Config{}), "/debug/pprof/"); code != 404 {
		t.Errorf("pprof off: GET /debug/pprof/ = %d, want 404", code)
	}
	h := Handler(Config{Pprof: true})
	for _, tc := range []struct{ path, want string }{
		{"/debug/pprof/", "goroutine"},
		{"/debug/pprof/heap?debug=1", "heap profile:"},
		{"/debug/pprof/goroutine?debug=1", "goroutine profile:"},
		{"/debug/pprof/cmdline", ""},
	} {
		if code, body := get(t, h, tc.path); code != 200 || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s = %d, want 200 containing %q; body starts %.80q", tc.path, code, tc.want, body)
		}
	}
	if code, _ := get(t, h, "/healthz"); code != 200 {
		t.Errorf("/healthz with pprof on = %d", code)
	}
}

func TestCheckPprof(t *testing.T) {
	for _, tc := range []struct {
		pprof bool
		addr  string
		ok    bool
	}{
		{false, "0.0.0.0:9464", true},
		{true, "127.0.0.1:9464", true},
		{true, "127.0.0.2:9464", true},
		{true, "[::1]:9464", true},
		{true, "localhost:9464", true},
		{true, ":9464", false},
		{true, "0.0.0.0:9464", false},
		{true, "10.1.2.3:9464", false},
		{true, "admin.example.net:9464", false},
		{true, "nonsense", false},
	} {
		err := CheckPprof("admin_pprof", tc.pprof, tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("CheckPprof(%v, %q) = %v, want ok=%v", tc.pprof, tc.addr, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "key admin_pprof") {
			t.Errorf("error does not name the key: %v", err)
		}
	}
}

package app

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/memberd/memberd/internal/admin"
)

func TestStatus(t *testing.T) {
	srv := httptest.NewServer(admin.Handler(admin.Config{Status: func(context.Context) any {
		return map[string]any{"policy": map[string]any{"version": 3}, "relays": []any{map[string]any{"path": "quic"}}}
	}}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	code, out, stderr := run(t, "status", "--admin", addr)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"policy.version: 3", `relays.0.path: "quic"`} {
		if !strings.Contains(out, want) {
			t.Errorf("status output %q lacks %q", out, want)
		}
	}
	code, out, _ = run(t, "status", "--admin", addr, "--json")
	if code != ExitOK || !strings.Contains(out, `"version": 3`) {
		t.Errorf("status --json = %d %q", code, out)
	}
}

func TestStatusUnreachable(t *testing.T) {
	srv := httptest.NewServer(nil)
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close() // nothing listens there any more
	code, _, stderr := run(t, "status", "--admin", addr, "--timeout", "2s")
	if code != ExitRuntime || !strings.Contains(stderr, "cannot reach memberd admin endpoint") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

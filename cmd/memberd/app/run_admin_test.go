package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/internal/demo"
)

// TestAdminBeforeRelays starts a demo appliance whose only relay is not
// running: its admin endpoint answers at once (it took ~10 s, the relay
// wait, before), /readyz says not ready and why, /status names the step
// and the relay's state, and /ping answers 503. Without -short it also
// waits for the start-up to finish and sees the full /status.
func TestAdminBeforeRelays(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	L, err := demo.Init(demo.Options{Dir: dir, Members: 2, Relays: 1, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	m := L.Members[0]
	cfg, err := appliance.LoadConfig(L.MemberConfig[m])
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := appliance.New(*cfg, appliance.Deps{Logger: slog.New(slog.NewTextHandler(tLogWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runAppliance: %v", err)
		}
	}()

	base := "http://" + cfg.Admin
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for {
		if code, _ := get("/healthz"); code == http.StatusOK {
			break
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("admin endpoint %s not up %v after start", cfg.Admin, time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("admin endpoint up %v after start", time.Since(start))
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Fatalf("/readyz during start-up: %d %q", code, body)
	}
	if code, body := get("/ping?member=" + L.Members[1]); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Fatalf("/ping during start-up: %d %q", code, body)
	}
	var st struct {
		Role, Member, Starting string
		Relays                 []struct{ ID, State string }
	}
	for {
		getJSON(t, base+"/status", &st)
		if st.Role != "appliance-starting" || st.Member != m {
			t.Fatalf("/status during start-up: %+v", st)
		}
		if len(st.Relays) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(st.Starting, "relay") || st.Relays[0].State == "up" {
		t.Fatalf("/status while waiting for the relay: %+v", st)
	}
	if testing.Short() {
		return
	}
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("runAppliance: %v", err)
	}
	t.Logf("appliance started %v after start, without a relay", time.Since(start))
	var full struct{ Role string }
	getJSON(t, base+"/status", &full)
	code, body := get("/readyz")
	if full.Role != "appliance" || code != http.StatusServiceUnavailable || !strings.Contains(body, "no relay connected") {
		t.Fatalf("after start-up: /status role %q, /readyz %d %q", full.Role, code, body)
	}
}

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

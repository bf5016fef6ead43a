package appliance

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestWarnIgnoredEnvProxy: relay.no_env_proxy with HTTPS_PROXY set says
// so once, naming the key and masking the password; nothing is said when
// the environment proxy is used, absent, or overridden by relay.proxy.
func TestWarnIgnoredEnvProxy(t *testing.T) {
	env := map[string]string{"HTTPS_PROXY": "http://alice:s3cret@proxy.corp:3128"}
	for _, tc := range []struct {
		name  string
		relay RelayConfig
		env   map[string]string
		warn  bool
	}{
		{"ignored", RelayConfig{NoEnvProxy: true}, env, true},
		{"lower case", RelayConfig{NoEnvProxy: true}, map[string]string{"https_proxy": "http://p:1"}, true},
		{"used", RelayConfig{}, env, false},
		{"no proxy in env", RelayConfig{NoEnvProxy: true}, nil, false},
		{"explicit proxy", RelayConfig{NoEnvProxy: true, Proxy: "http://other:3128"}, env, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Member: "bank-a", Identity: "identity", Policy: PolicyConfig{Dir: "policy", StateDir: "state"},
				Relay: tc.relay, Dir: "/etc/memberd"}.WithDefaults()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			warnIgnoredEnvProxy(slog.New(slog.NewTextHandler(&buf, nil)), &c, func(k string) string { return tc.env[k] })
			out := buf.String()
			if got := strings.Contains(out, "relay.no_env_proxy is true"); got != tc.warn {
				t.Fatalf("warned %v, want %v: %q", got, tc.warn, out)
			}
			if strings.Contains(out, "s3cret") {
				t.Fatalf("the proxy password is logged: %q", out)
			}
			if tc.warn {
				t.Log(out)
			}
		})
	}
}

package appliance

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

const validRunConfig = `
member: bank-a
identity: identity
policy: {dir: policy, state_dir: state, genesis: "sha256:` + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + `"}
`

// TestWarnIgnoredEnvProxy: relay.no_env_proxy with HTTPS_PROXY set says
// so once, naming the key and masking the password; nothing is said when
// the environment proxy is used, absent, or overridden by relay.proxy.
func TestWarnIgnoredEnvProxy(t *testing.T) {
	env := map[string]string{"HTTPS_PROXY": "http://alice:s3cret@proxy.corp:3128"}
	for _, tc := range []struct {
		name, relay string
		env         map[string]string
		warn        bool
	}{
		{"ignored", "relay: {no_env_proxy: true}\n", env, true},
		{"lower case", "relay: {no_env_proxy: true}\n", map[string]string{"https_proxy": "http://p:1"}, true},
		{"used", "", env, false},
		{"no proxy in env", "relay: {no_env_proxy: true}\n", nil, false},
		{"explicit proxy", "relay: {no_env_proxy: true, proxy: 'http://other:3128'}\n", env, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(validRunConfig+tc.relay), "/etc/memberd")
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			warnIgnoredEnvProxy(slog.New(slog.NewTextHandler(&buf, nil)), c, func(k string) string { return tc.env[k] })
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

// TestRunConfig: defaults, and every bad key is named in the error.
func TestRunConfig(t *testing.T) {
	c, err := ParseConfig([]byte(validRunConfig), "/etc/memberd")
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin != "127.0.0.1:9464" || c.Tunnel.PushPort != DefaultPushPort || c.Relay.QUICTimeout != time.Second {
		t.Fatalf("defaults: admin %q push_port %d quic_timeout %v", c.Admin, c.Tunnel.PushPort, c.Relay.QUICTimeout)
	}
	if c.Path(c.Identity) != "/etc/memberd/identity" || c.genesis.IsZero() {
		t.Fatalf("identity path %q, genesis %v", c.Path(c.Identity), c.genesis)
	}
	for _, tc := range []struct{ name, extra, want string }{
		// The decoder names the line: the key is appended after the config.
		{"unknown key", "surprise: 1\n", fmt.Sprintf("surprise: line %d: unknown key", strings.Count(validRunConfig, "\n")+1)},
		{"bad genesis", "", "policy.genesis"},
		{"proxy scheme", "relay: {proxy: 'socks5://x:1'}\n", "relay.proxy"},
		{"negative quic timeout", "relay: {quic_timeout: -1s}\n", "relay.quic_timeout"},
		{"rotation too short", "tunnel: {rotate_every: 10s}\n", "tunnel.rotate_every"},
		{"forward without member", "tunnel: {forwards: [{listen: '127.0.0.1:1', port: 7}]}\n", "tunnel.forwards[0]"},
		{"service on push port", "tunnel: {services: [{port: 7099, target: 'a:1'}]}\n", "tunnel.services[0].port"},
		{"member addresses prefix", "tunnel: {member_addresses: {prefix: 127.77.0.0, ports: [30303]}}\n", "tunnel.member_addresses.prefix"},
		{"member addresses ports", "tunnel: {member_addresses: {prefix: 127.77.0.0/16}}\n", "tunnel.member_addresses.ports"},
		{"admin not host:port", "admin: nope\n", "key admin"},
		{"pprof off loopback", "admin: 0.0.0.0:9464\nadmin_pprof: true\n", "key admin_pprof"},
		{"pool size", "hsm: {pool_size: 1000}\n", "hsm.pool_size"},
		{"relative module", "hsm: {module_path: lib.so}\n", "hsm.module_path"},
		{"ledger listen", "ledger: {listen: bad}\n", "ledger.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := validRunConfig + tc.extra
			if tc.name == "bad genesis" {
				y = strings.Replace(y, "sha256:0123", "sha256:zz23", 1)
			}
			_, err := ParseConfig([]byte(y), "/x")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to name %q", err, tc.want)
			}
		})
	}
	for _, missing := range []string{"member", "identity", "policy.dir", "policy.state_dir"} {
		y := map[string]string{
			"member":           "identity: i\npolicy: {dir: p, state_dir: s}\n",
			"identity":         "member: m\npolicy: {dir: p, state_dir: s}\n",
			"policy.dir":       "member: m\nidentity: i\npolicy: {state_dir: s}\n",
			"policy.state_dir": "member: m\nidentity: i\npolicy: {dir: p}\n",
		}[missing]
		if _, err := ParseConfig([]byte(y), "/x"); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("missing %s: error %v", missing, err)
		}
	}
}

// FuzzRunConfig: the appliance's strict YAML config parser never panics,
// and what it accepts names a member, an identity and a policy folder, and
// serves pprof only on a loopback admin address.
func FuzzRunConfig(f *testing.F) {
	f.Add([]byte(validRunConfig))
	f.Add([]byte(validRunConfig + "admin_pprof: true\n"))
	f.Add([]byte(validRunConfig + "ledger: {listen: ':7050', data_dir: l}\ntunnel: {forwards: [{listen: 'x', member: m, port: 1}]}\n"))
	f.Add([]byte("member: [1, 2]\n"))
	f.Add([]byte("{{{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b, "/x")
		if err != nil {
			return
		}
		if c.Member == "" || c.Identity == "" || c.Policy.Dir == "" || c.Admin == "" {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
		if host, _, _ := net.SplitHostPort(c.Admin); c.AdminPprof && host != "localhost" && !net.ParseIP(host).IsLoopback() {
			t.Fatalf("accepted pprof on admin %q", c.Admin)
		}
	})
}

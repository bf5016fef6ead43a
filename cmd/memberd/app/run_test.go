package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/appliance"
)

const validRunConfig = `
member: bank-a
identity: identity
policy: {dir: policy, state_dir: state, genesis: "sha256:` + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + `"}
`

// TestRunConfig: defaults, and every bad key is named in the error.
func TestRunConfig(t *testing.T) {
	c, err := parseRunConfig([]byte(validRunConfig), "/etc/memberd")
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin != "127.0.0.1:9464" || c.Tunnel.PushPort != appliance.DefaultPushPort || c.Relay.QUICTimeout != time.Second {
		t.Fatalf("defaults: admin %q push_port %d quic_timeout %v", c.Admin, c.Tunnel.PushPort, c.Relay.QUICTimeout)
	}
	if c.Path(c.Identity) != "/etc/memberd/identity" || c.GenesisHash().IsZero() {
		t.Fatalf("identity path %q, genesis %v", c.Path(c.Identity), c.GenesisHash())
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
			_, err := parseRunConfig([]byte(y), "/x")
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
		if _, err := parseRunConfig([]byte(y), "/x"); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("missing %s: error %v", missing, err)
		}
	}
}

// TestRunExitCodes: config errors exit 2 naming the file; a bad
// --log-format too.
func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	code, _, errb := run(t, "run", "--config", filepath.Join(dir, "none.yaml"))
	if code != ExitUsage || !strings.Contains(errb, "none.yaml") {
		t.Fatalf("missing config: exit %d, %q", code, errb)
	}
	bad := writeFile(t, dir, "bad.yaml", []byte("member: m\nidentity: i\n"))
	code, _, errb = run(t, "run", "--config", bad)
	if code != ExitUsage || !strings.Contains(errb, "policy.dir") || !strings.Contains(errb, bad) {
		t.Fatalf("bad config: exit %d, %q", code, errb)
	}
	pprof := writeFile(t, dir, "pprof.yaml", []byte(validRunConfig+"admin: ':9464'\nadmin_pprof: true\n"))
	code, _, errb = run(t, "run", "--config", pprof)
	if code != ExitUsage || !strings.Contains(errb, "key admin_pprof") || !strings.Contains(errb, pprof) {
		t.Fatalf("pprof on a non-loopback admin address: exit %d, %q", code, errb)
	}
	code, _, errb = run(t, "run", "--config", bad, "--log-format", "xml")
	if code != ExitUsage || !strings.Contains(errb, "--log-format") {
		t.Fatalf("bad log format: exit %d, %q", code, errb)
	}
}

// TestDemoInitAndRun: 'memberd demo init --hsm soft' writes a consortium
// whose configs pass validation; 'memberd demo --dir' runs it and every
// member reaches every other through the tunnel; the admin endpoint
// serves /status with relays, peers and the policy; a POST /push of the
// genesis is stored by every member.
func TestDemoInitAndRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a consortium (test/consortium covers it under -short)")
	}
	dir := filepath.Join(t.TempDir(), "demo")
	code, out, errb := run(t, "demo", "init", "--members", "2", "--relays", "2", "--dir", dir, "--hsm", "soft")
	if code != ExitOK {
		t.Fatalf("demo init: exit %d\n%s%s", code, out, errb)
	}
	L, err := LoadDemoLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range L.Members {
		if _, err := loadRunConfig(L.MemberConfig[m]); err != nil {
			t.Fatal(err)
		}
	}
	code, _, errb = run(t, "demo", "init", "--dir", dir)
	if code != ExitUsage || !strings.Contains(errb, "not empty") {
		t.Fatalf("demo init into a used folder: exit %d, %q", code, errb)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := StartDemo(ctx, L, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	if err := d.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + d.AdminAddr(L.Members[0]) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Member string `json:"member"`
		Policy struct {
			Version uint64 `json:"version"`
		} `json:"policy"`
		Relays []struct {
			ID, State, Path string
		} `json:"relays"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Member != L.Members[0] || st.Policy.Version != 1 || len(st.Relays) != 2 || st.Relays[0].State != "up" {
		t.Fatalf("/status: %+v, %v", st, err)
	}
	if err := d.ServeEcho(ctx, demoEchoPort); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.CheckAll(ctx, demoEchoPort) {
		if c.Err != nil {
			t.Fatalf("%s → %s: %v", c.From, c.To, c.Err)
		}
		t.Logf("%s → %s via %s (%s): rtt %v", c.From, c.To, c.Relay, c.Path, c.RTT)
	}
	res, err := d.PushPolicy(ctx, L.Members[0], L.Genesis.Marshal())
	if err != nil || len(res) != 2 {
		t.Fatalf("push: %+v %v", res, err)
	}
	for _, r := range res {
		if !r.OK {
			t.Fatalf("push to %s: %s", r.Member, r.Detail)
		}
	}
	code, out, errb = run(t, "policy", "push", "--admin", d.AdminAddr(L.Members[1]), filepath.Join(dir, "genesis.yaml"))
	if code != ExitOK || !strings.Contains(out, L.Members[0]) {
		t.Fatalf("memberd policy push: exit %d\n%s%s", code, out, errb)
	}
	t.Logf("memberd policy push:\n%s", out)
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
		c, err := parseRunConfig(b, "/x")
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

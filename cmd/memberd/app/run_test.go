package app

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/internal/demo"
)

const validRunConfig = `
member: bank-a
identity: identity
policy: {dir: policy, state_dir: state, genesis: "sha256:` + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + `"}
`

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
	L, err := demo.LoadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range L.Members {
		if _, err := appliance.LoadConfig(L.MemberConfig[m]); err != nil {
			t.Fatal(err)
		}
	}
	code, _, errb = run(t, "demo", "init", "--dir", dir)
	if code != ExitUsage || !strings.Contains(errb, "not empty") {
		t.Fatalf("demo init into a used folder: exit %d, %q", code, errb)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := demo.Start(ctx, L, nil)
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
	if err := d.ServeEcho(ctx, demo.EchoPort); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.CheckAll(ctx, demo.EchoPort) {
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

// TestDemoInitChannels: 'memberd demo init --channels alpha,beta=member-b+member-c'
// writes a policy with both channels (alpha of every member, beta of the
// two named, ordered by them), and every member's memberd.yaml names both
// genesis blocks; a bad spec or an unknown member is refused.
func TestDemoInitChannels(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	code, out, errb := run(t, "demo", "init", "--members", "3", "--relays", "1", "--dir", dir, "--hsm", "soft", "--channels", "alpha,beta=member-b+member-c")
	if code != ExitOK {
		t.Fatalf("demo init: exit %d\n%s%s", code, out, errb)
	}
	L, err := demo.LoadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := L.Genesis.Channels(); !slices.Equal(got, []string{"alpha", "beta"}) {
		t.Fatalf("channels %v", got)
	}
	if got := L.Genesis.ChannelConsenters("alpha"); !slices.Equal(got, []string{"member-a", "member-b", "member-c"}) {
		t.Fatalf("alpha's consenters %v", got)
	}
	beta, err := L.Genesis.ForChannel("beta")
	if err != nil || !slices.Equal(beta.Ledger().Consenters, []string{"member-b", "member-c"}) || len(beta.Members()) != 2 {
		t.Fatalf("beta: %v %+v", err, beta)
	}
	for m, want := range map[string]int{"member-a": 2, "member-c": 2} {
		cfg, err := appliance.LoadConfig(L.MemberConfig[m])
		if err != nil {
			t.Fatal(err)
		}
		if n := len(cfg.Ledger.GenesisBlocks) + min(len(cfg.Ledger.GenesisBlock), 1); n != want {
			t.Errorf("%s: %d genesis blocks (%q, %v), want %d", m, n, cfg.Ledger.GenesisBlock, cfg.Ledger.GenesisBlocks, want)
		}
	}
	for _, bad := range []string{"=member-a", "beta=member-b+", "beta=member-x"} {
		code, _, errb := run(t, "demo", "init", "--dir", filepath.Join(t.TempDir(), "d"), "--hsm", "soft", "--channels", bad)
		if code == ExitOK {
			t.Errorf("--channels %q: exit 0", bad)
		}
		t.Logf("--channels %q: exit %d: %s", bad, code, strings.TrimSpace(errb))
	}
}

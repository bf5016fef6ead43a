//go:build runbooks

package runbooks

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testenv"
)

// lab is the demo consortium the runbooks run against: one folder per host.
type lab struct {
	t     *testing.T
	dir   string // everything lives here
	demo  string // memberd demo init output
	bin   string // folder put first on PATH: memberd and the systemctl stand-in
	gov   string // the governance repository (current.yaml)
	hsm   string // PKCS#11 module
	extra map[string]map[string]string
}

// hostEnv is the environment of a block run on host h: the variables the doc
// documents (ETC, ADMIN, ADMIN_KEY, TOKEN, PIN_FILE, HSM_MODULE, GOV, ...).
func (l *lab) hostEnv(h string) []string {
	env := append(os.Environ(),
		"PATH="+l.bin+":"+os.Getenv("PATH"),
		"SOFTHSM2_CONF="+filepath.Join(l.demo, "softhsm2.conf"),
		"HSM_MODULE="+l.hsm,
		"GOV="+l.gov,
		"DEMO="+l.demo,
		"TMPDIR="+filepath.Join(l.dir, "tmp"), // the blocks' mktemp
	)
	switch {
	case strings.HasPrefix(h, "relay-"):
		env = append(env, "ETC="+filepath.Join(l.demo, "relays", h))
	default:
		etc := filepath.Join(l.demo, "members", h)
		env = append(env, "ETC="+etc, "DATA="+etc, "TOKEN="+h, "PIN_FILE="+filepath.Join(etc, "pin"),
			"CA_KEY="+fmt.Sprintf("pkcs11:token=%s;object=ca?module-path=%s&pin-source=file:%s", h, l.hsm, filepath.Join(etc, "pin")))
		if a := yamlTop(filepath.Join(etc, "memberd.yaml"), "admin"); a != "" {
			env = append(env, "ADMIN="+a)
		}
		env = append(env, "ADMIN_KEY="+fmt.Sprintf("pkcs11:token=%s;object=admin?module-path=%s&pin-source=file:%s", h, l.hsm, filepath.Join(etc, "pin")))
	}
	for k, v := range l.extra[h] {
		env = append(env, k+"="+v)
	}
	return env
}

// yamlTop reads a top-level "key: value" of a config file.
func yamlTop(file, key string) string {
	raw, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// sh runs a script on host h and returns its combined output.
func (l *lab) sh(ctx context.Context, h, script string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Env = l.hostEnv(h)
	cmd.Dir = l.dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs a script the harness needs (not a runbook step).
func (l *lab) must(h, script string) string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := l.sh(ctx, h, script)
	if err != nil {
		l.t.Fatalf("on %s: %s: %v\n%s", h, script, err, out)
	}
	return out
}

// runbook runs every block of runbook name, in doc order, each as written,
// and returns their output.
func (l *lab) runbook(t *testing.T, bs []block, name string) string {
	t.Helper()
	return l.blocks(t, bs, name, 0, 1<<30)
}

// blocks runs blocks [from, to) of runbook name (counted from 0).
func (l *lab) blocks(t *testing.T, bs []block, name string, from, to int) string {
	t.Helper()
	var all strings.Builder
	i := -1
	for _, b := range bs {
		if b.runbook != name {
			continue
		}
		i++
		if i < from || i >= to {
			continue
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		out, err := l.sh(ctx, b.host, b.script)
		cancel()
		fmt.Fprintf(&all, "%s", out)
		t.Logf("docs/runbooks.md:%d (%s on %s) %.1fs", b.line, name, b.host, time.Since(start).Seconds())
		if err != nil {
			t.Fatalf("docs/runbooks.md:%d: runbook %s, block on %s failed: %v\n--- script ---\n%s--- output ---\n%s", b.line, name, b.host, err, b.script, out)
		}
	}
	return all.String()
}

// stopAll ends every process the stand-in systemctl started (by the PID it
// recorded).
func (l *lab) stopAll() {
	pids, _ := filepath.Glob(filepath.Join(l.demo, "*", "*", ".memberd*.pid"))
	for _, p := range pids {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(string(raw), &pid); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func newLab(t *testing.T) *lab {
	if testing.Short() {
		t.Skip("runbooks start a consortium of real processes (not in -short)")
	}
	hsm, _ := testenv.SoftHSMModule(t)
	testenv.Command(t, "pkcs11-tool", "opensc")
	testenv.Command(t, "yq", "yq")
	testenv.Command(t, "jq", "jq")
	testenv.Command(t, "curl", "curl")
	dir, err := os.MkdirTemp("", "memberd-runbooks-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("RUNBOOKS_KEEP") != "0" {
			t.Logf("kept %s (process logs: */*/memberd*.log)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	l := &lab{t: t, dir: dir, demo: filepath.Join(dir, "demo"), bin: filepath.Join(dir, "bin"),
		gov: filepath.Join(dir, "gov"), hsm: hsm, extra: map[string]map[string]string{}}
	for _, d := range []string{l.bin, l.gov, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The runbooks call memberd from PATH ($bin): MEMBERD_BIN linked
	// there, or one built there.
	if memberd := testenv.Memberd(t, "MEMBERD_BIN", l.bin); memberd != filepath.Join(l.bin, "memberd") {
		if err := os.Symlink(memberd, filepath.Join(l.bin, "memberd")); err != nil {
			t.Fatal(err)
		}
	}
	shim, err := os.ReadFile("testdata/systemctl")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.bin, "systemctl"), shim, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.stopAll)
	l.must("member-a", `memberd demo init --members 3 --relays 2 --dir "$DEMO" >/dev/null`)
	// A bank's policy admin key and its ledger client key live in its HSM:
	// put the demo's file keys into each member's token ("admin", "client").
	for _, m := range []string{"member-a", "member-b", "member-c"} {
		l.must(m, `
imp() { # imp PEM LABEL ID
	openssl pkey -in "$1" -outform DER -out "$ETC/.k.der"
	openssl pkey -in "$1" -pubout -outform DER -out "$ETC/.p.der"
	pkcs11-tool --module "$HSM_MODULE" --token-label "$TOKEN" --login --pin "$(cat "$PIN_FILE")" --write-object "$ETC/.k.der" --type privkey --label "$2" --id "$3" >/dev/null
	pkcs11-tool --module "$HSM_MODULE" --token-label "$TOKEN" --login --pin "$(cat "$PIN_FILE")" --write-object "$ETC/.p.der" --type pubkey --label "$2" --id "$3" >/dev/null
	rm -f "$ETC/.k.der" "$ETC/.p.der"
}
imp "$ETC/admin-key.pem" admin a1
imp "$ETC/client/msp/keystore/key.pem" client c1
imp "$ETC/ca-key.pem" ca ca
cp "$ETC/client/msp/signcerts/cert.pem" "$ETC/client.pem"
`)
	}
	l.must("member-a", `cp "$DEMO/genesis.yaml" "$GOV/current.yaml"; cp "$DEMO/genesis.yaml" "$GOV/v1.yaml"
# The channel's genesis block, published with the channel.
cp "$ETC/genesis.block" "$GOV/genesis.block"`)
	for _, r := range []string{"relay-1", "relay-2"} {
		l.must(r, `systemctl start memberd-relay`)
	}
	// The members together: none is ready before the ledger has a quorum.
	var wg sync.WaitGroup
	errs := make(chan string, 3)
	for _, m := range []string{"member-a", "member-b", "member-c"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if out, err := l.sh(ctx, m, `systemctl start memberd`); err != nil {
				errs <- fmt.Sprintf("%s: %v: %s", m, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("start %s", e)
	}
	// Some transactions, so that the chains the recovery compares hold data.
	l.must("member-a", `for i in 1 2 3 4 5; do
memberd ledger submit --orderer "$(yq -r .ledger.listen "$ETC/memberd.yaml")" --channel demo --msp-id member-aMSP \
  --cert "$ETC/client.pem" --key "pkcs11:token=$TOKEN;object=client?module-path=$HSM_MODULE&pin-source=file:$PIN_FILE" \
  --tls-ca "$ETC/ca.pem" --data "runbook tx $i" >/dev/null
done`)
	return l
}

// TestRunbooks runs every runbook of docs/runbooks.md, in order, on one demo
// consortium of real processes (2 relays, 3 members, SoftHSM2).
func TestRunbooks(t *testing.T) {
	bs := docBlocks(t)
	l := newLab(t)
	start := time.Now()
	for _, name := range order {
		ok := t.Run(name, func(t *testing.T) {
			checks[name](t, l, bs)
		})
		if !ok {
			t.Logf("logs of the processes are in %s (kept: the test failed)", l.demo)
			break
		}
	}
	t.Logf("all runbooks: %.1fs", time.Since(start).Seconds())
}

var checks = map[string]func(*testing.T, *lab, []block){}

// contains fails unless out has every want line (substring).
func contains(t *testing.T, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

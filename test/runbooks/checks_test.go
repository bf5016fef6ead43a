//go:build runbooks

package runbooks

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/memberd/memberd/internal/loopport"
)

// The incidents each runbook answers are caused here, by the test, before
// the runbook's blocks run; what the runbook must show is checked by its
// own blocks, and here where the doc only shows it as text.
func init() {
	checks["install"] = func(t *testing.T, l *lab, bs []block) { l.runbook(t, bs, "install") }

	checks["status-hsm"] = func(t *testing.T, l *lab, bs []block) {
		// The token "unplugged": member-a's SoftHSM2 token folder moved away.
		tok := tokenDir(t, l, "member-a")
		hidden := filepath.Join(l.dir, "unplugged-token")
		if err := os.Rename(tok, hidden); err != nil {
			t.Fatal(err)
		}
		restored := false
		defer func() {
			if !restored {
				_ = os.Rename(hidden, tok)
			}
		}()
		l.must("member-a", `timeout 30 sh -c 'while curl -fsS "http://$ADMIN/readyz" >/dev/null; do sleep 1; done'`)
		l.blocks(t, bs, "status-hsm", 0, 1)
		if err := os.Rename(hidden, tok); err != nil {
			t.Fatal(err)
		}
		restored = true
		l.blocks(t, bs, "status-hsm", 1, 1<<30)
	}

	checks["status-relay"] = func(t *testing.T, l *lab, bs []block) {
		l.must("relay-1", `systemctl stop memberd-relay`)
		l.must("member-a", `timeout 30 sh -c 'until memberd status --admin "$ADMIN" | grep -Eq "^relay-1 +[^ ]+ +down "; do sleep 1; done'`)
		l.runbook(t, bs, "status-relay")
		// Both relays unreachable: the lines the doc quotes.
		l.must("relay-2", `systemctl stop memberd-relay`)
		out := l.must("member-a", `timeout 30 sh -c 'until memberd status --admin "$ADMIN" | grep -q "no relay connected"; do sleep 1; done'
sleep 3; memberd status --admin "$ADMIN"`)
		contains(t, out,
			"  ! no relay connected: the tunnel reaches no member; check that outbound UDP/443 or TCP/443 (or the HTTP proxy, key relay.proxy) reaches the relays",
			"  ! ledger is not active: ordering service unavailable: no raft leader known")
		for _, r := range []string{"relay-1", "relay-2"} {
			l.must(r, `systemctl start memberd-relay`)
		}
		for _, m := range []string{"member-a", "member-b", "member-c"} {
			l.must(m, `timeout 60 sh -c 'until curl -fsS "http://$ADMIN/readyz" >/dev/null; do sleep 1; done'`)
		}
	}

	checks["rotate-key"] = func(t *testing.T, l *lab, bs []block) {
		state := `echo "$(memberd status --admin "$ADMIN" --json | jq -r .identity.serial) pid $(cat "$ETC/.memberd.pid")"`
		before := strings.Fields(l.must("member-b", state))
		l.runbook(t, bs, "rotate-key")
		after := strings.Fields(l.must("member-b", state))
		if before[0] == after[0] {
			t.Fatalf("identity serial unchanged: %s", before[0])
		}
		if before[2] != after[2] {
			t.Fatalf("the appliance restarted: pid %s, then %s", before[2], after[2])
		}
		// Still one process (no restart) and still reaching the others.
		l.must("member-b", `memberd ping --admin "$ADMIN" -c 1 member-a`)
	}

	checks["replace-relay"] = func(t *testing.T, l *lab, bs []block) {
		addr := freePort(t)
		l.setExtra("relay-3", "RELAY_ADDR", addr)
		l.setExtra("member-a", "RELAY_ADDR", addr)
		l.runbook(t, bs, "replace-relay")
		for _, m := range []string{"member-b", "member-c"} {
			l.must(m, `timeout 60 sh -c 'until memberd status --admin "$ADMIN" | grep -Eq "^relay-3 +[^ ]+ +up "; do sleep 1; done'
memberd ping --admin "$ADMIN" -c 1 member-a`)
		}
	}

	checks["onboard"] = func(t *testing.T, l *lab, bs []block) {
		l.setExtra("member-d", "ADMIN", freePort(t))
		led := freePort(t)
		l.setExtra("member-d", "LEDGER_ADDR", led)
		l.setExtra("member-a", "LEDGER_ADDR", led)
		l.setExtra("member-d", "ADMIN_A", l.admin("member-a"))
		l.runbook(t, bs, "onboard")
		l.must("member-c", `memberd ping --admin "$ADMIN" -c 1 member-d`)
	}

	checks["recover"] = func(t *testing.T, l *lab, bs []block) {
		l.setExtra("member-b", "ADMIN_A", l.admin("member-a"))
		// The disk is lost: the process dies, its data is gone.
		l.must("member-b", `systemctl stop memberd; rm -rf "$DATA/ledger" "$DATA/state" "$DATA/policy"`)
		l.runbook(t, bs, "recover")
	}

	checks["offboard"] = func(t *testing.T, l *lab, bs []block) {
		l.runbook(t, bs, "offboard")
		l.must("member-d", `timeout 60 sh -c 'until ! memberd ping --admin "$ADMIN" -c 1 member-c >/dev/null 2>&1; do sleep 1; done'`)
	}
}

func (l *lab) setExtra(host, k, v string) {
	if l.extra[host] == nil {
		l.extra[host] = map[string]string{}
	}
	l.extra[host][k] = v
}

func freePort(t *testing.T) string {
	t.Helper()
	a, err := loopport.Free()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// tokenDir is the SoftHSM2 folder of the token labelled label.
func tokenDir(t *testing.T, l *lab, label string) string {
	t.Helper()
	objs, _ := filepath.Glob(filepath.Join(l.demo, "tokens", "*", "token.object"))
	for _, o := range objs {
		raw, err := os.ReadFile(o)
		if err == nil && strings.Contains(string(raw), label) {
			return filepath.Dir(o)
		}
	}
	t.Fatalf("no SoftHSM2 token %q under %s/tokens", label, l.demo)
	return ""
}

// admin is the admin address of a member of the demo.
func (l *lab) admin(m string) string {
	return strings.TrimSpace(l.must(m, `echo "$ADMIN"`))
}

package app

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/demo"
)

// TestPingCommand writes a two-member demo consortium with 'memberd demo
// init', runs it (real relay on loopback, real appliances) and runs the
// 'memberd ping' and 'memberd ledger submit' lines demo init printed:
// replies with an RTT for each attempt and exit 0, SUCCESS for the submit.
// A member the policy does not know and bad flags exit 2; a stopped member
// gives no reply and exit 1; no appliance at --admin exits 1.
func TestPingCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	code, out, errb := run(t, "demo", "init", "--members", "2", "--relays", "1", "--dir", dir, "--hsm", "soft")
	if code != ExitOK {
		t.Fatalf("demo init: exit %d\n%s%s", code, out, errb)
	}
	pingLine, submitLine := printedLine(t, out, "memberd ping "), printedLine(t, out, "memberd ledger submit ")
	L, err := demo.LoadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, ctx := startDemo(t, L, 2*time.Minute)
	a, b := L.Members[0], L.Members[1]
	adm := d.AdminAddr(a)

	if want := "memberd ping --admin " + adm + " " + b; pingLine != want {
		t.Fatalf("demo init printed %q, want %q", pingLine, want)
	}
	code, out, errb = run(t, append(strings.Fields(pingLine)[1:], "-c", "3", "--interval", "10ms", "--timeout", "5s")...)
	t.Logf("%s:\n%s%s", pingLine, out, errb)
	if code != ExitOK || strings.Count(out, "reply from "+b) != 3 || !strings.Contains(out, "3 sent, 3 received, 0% loss, rtt min/avg/max = ") {
		t.Fatalf("ping %s: exit %d\n%s%s", b, code, out, errb)
	}
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	code, out, errb = run(t, strings.Fields(strings.ReplaceAll(submitLine, "'", ""))[1:]...)
	if code != ExitOK || !strings.HasPrefix(out, "SUCCESS ") {
		t.Fatalf("%s: exit %d\n%s%s", submitLine, code, out, errb)
	}

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown member", []string{"ping", "--admin", adm, "-c", "1", "bank-nobody"}, "not a member"},
		{"itself", []string{"ping", "--admin", adm, "-c", "1", a}, "this appliance"},
		{"no member", []string{"ping", "--admin", adm}, "accepts 1 arg"},
		{"count 0", []string{"ping", "--admin", adm, "-c", "0", b}, "--count"},
		{"timeout too long", []string{"ping", "--admin", adm, "--timeout", "1h", b}, "--timeout"},
	} {
		code, out, errb := run(t, c.args...)
		if code != ExitUsage || !strings.Contains(errb, c.want) {
			t.Errorf("%s: exit %d, want %d with %q\n%s%s", c.name, code, ExitUsage, c.want, out, errb)
		}
	}

	if err := d.StopMember(b); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, out, errb = run(t, "ping", "--admin", adm, "-c", "2", "--interval", "0", "--timeout", "300ms", b)
	if code != ExitRuntime || !strings.Contains(out, "2 sent, 0 received, 100% loss") || !strings.Contains(errb, "did not answer") {
		t.Fatalf("ping of a stopped member: exit %d\n%s%s", code, out, errb)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("ping of a stopped member took %v", el)
	}

	code, _, errb = run(t, "ping", "--admin", "127.0.0.1:1", "-c", "1", b)
	if code != ExitRuntime || !strings.Contains(errb, "cannot reach memberd admin endpoint") {
		t.Fatalf("ping without an appliance: exit %d %s", code, errb)
	}
}

// printedLine is the line of out that starts with prefix, trimmed.
func printedLine(t *testing.T, out, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("no line starting with %q in:\n%s", prefix, out)
	return ""
}

package app

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPingCommand runs a two-member demo consortium (real relay on
// loopback, real appliances) and 'memberd ping' against the first one's
// admin endpoint: replies with an RTT for each attempt and exit 0; a
// member the policy does not know and bad flags exit 2; a stopped member
// gives no reply and exit 1; no appliance at --admin exits 1.
func TestPingCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	L, err := DemoInit(DemoOptions{Dir: dir, Members: 2, Relays: 1, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := startDemo(t, L, 2*time.Minute)
	a, b := L.Members[0], L.Members[1]
	adm := d.AdminAddr(a)

	code, out, errb := run(t, "ping", "--admin", adm, "-c", "3", "--interval", "10ms", "--timeout", "5s", b)
	t.Logf("memberd ping:\n%s%s", out, errb)
	if code != ExitOK || strings.Count(out, "reply from "+b) != 3 || !strings.Contains(out, "3 sent, 3 received, 0% loss, rtt min/avg/max = ") {
		t.Fatalf("ping %s: exit %d\n%s%s", b, code, out, errb)
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

package app

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/memberd/memberd/internal/daemon"
	"github.com/memberd/memberd/internal/demo"
)

// checkStatusTable runs 'memberd status' against member's running
// appliance in d (a ledger follower, after traffic) and matches its output
// line by line: the golden layout of wantApplianceTable with the values
// that vary from run to run as patterns.
func checkStatusTable(t *testing.T, d *demo.Consortium, member string) {
	t.Helper()
	code, out, errb := run(t, "status", "--admin", d.AdminAddr(member))
	if code != ExitOK {
		t.Fatalf("memberd status: exit %d: %s", code, errb)
	}
	q := regexp.QuoteMeta
	want := []string{
		q(member+" (appliance), consortium demo, policy version 1 (sha256:") + `[0-9a-f]{12}…\)`,
		q("identity  CN="+member+"-appliance,") + `(\S+,)?` + q("O="+member+", serial ") + `\d+, expires \d{4}-\d\d-\d\d \(in 36\dd\d+h\)`,
		`tunnel    100\.64\.0\.\d+, mtu \d+`,
		``,
		`RELAY +ADDRESS +STATE +PATH +IN USE +RTT +SINCE`,
	}
	for range d.Layout.Relays {
		want = append(want, `relay-\d +127\.0\.0\.1:\d+ +up +(quic|tcp) +(yes +)?(-|[0-9.]+[µm]?s) +[0-9.hms]+ ago`)
	}
	want = append(want, ``, `PEER +OVERLAY +HANDSHAKE +KEY ATTESTATION`)
	for range len(d.Layout.Members) - 1 {
		want = append(want, `member-[a-z] +100\.64\.0\.\d+ +([0-9.hms]+ ago|never) +expires in \d+d\d+h(, rotating)?`)
	}
	want = append(want, ``, `CHANNEL +ROLE +HEIGHT +LEADER +TERM +STATE`,
		`demo +follower +\d+ +member-[a-z] +\d+ +active`, ``)
	// The demo's certificates are fresh and every relay is up: only this
	// host's UDP buffer limits can warn.
	if udp := daemon.UDPBufferWarnings("/proc/sys"); len(udp) > 0 {
		want = append(want, q(fmt.Sprintf("WARNINGS (%d)", len(udp))))
		for _, w := range udp {
			want = append(want, q("  ! "+w))
		}
	} else {
		want = append(want, `no warnings`)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("memberd status: %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	inUse := 0
	for i, l := range lines {
		if !regexp.MustCompile("^" + want[i] + "$").MatchString(l) {
			t.Fatalf("memberd status line %d:\n%s\ndoes not match\n%s\nin:\n%s", i+1, l, want[i], out)
		}
		if strings.HasPrefix(l, "relay-") && strings.Contains(l, " yes ") {
			inUse++
		}
	}
	if inUse != 1 {
		t.Fatalf("memberd status: %d relays in use, want 1:\n%s", inUse, out)
	}
	t.Logf("memberd status --admin %s:\n%s", d.AdminAddr(member), out)
}

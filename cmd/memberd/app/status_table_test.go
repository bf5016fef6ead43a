package app

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/relay"
)

// statusNow is the "now" of the canned documents below.
var statusNow = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

const cannedApplianceStatus = `{
  "role": "appliance", "member": "member-a",
  "warnings": ["identity certificate /etc/memberd/identity/cert.pem (serial 7) expires in 12d0h, on 2026-12-19T12:00:00Z: renew it"],
  "policy": {"version": 3, "hash": "sha256:32b1fa1ad886e1ec81b2f7c2886e1c30e6e1810dccc7f00a3945ce19dc5a6028", "consortium": "demo"},
  "identity": {"file": "/etc/memberd/identity/cert.pem", "subject": "CN=member-a-appliance,O=member-a", "serial": "7", "not_after": "2026-12-19T12:00:00Z"},
  "relays": [
    {"id": "relay-1", "addr": "relay1.example:443", "state": "up", "path": "quic", "healthy": true, "active": true, "rtt_ns": 1500000, "since": "2026-12-07T11:58:00Z"},
    {"id": "relay-2", "addr": "relay2.example:443", "state": "up", "path": "proxy", "healthy": true, "active": false, "rtt_ns": 23000000, "since": "2026-12-07T09:00:00Z"},
    {"id": "relay-3", "addr": "relay3.example:443", "state": "down", "rtt_ns": 0, "since": "2026-12-07T11:59:30Z", "last_error": "dial: connection refused"}
  ],
  "tunnel": {"addr": "100.64.0.1", "mtu": 1200, "peers": [
    {"member": "member-b", "addr": "100.64.0.2", "last_handshake": "2026-12-07T11:59:48Z", "attestation_expiry": "2026-12-09T12:00:00Z", "rotating": false},
    {"member": "member-c", "addr": "100.64.0.3", "last_handshake": "", "attestation_expiry": "2026-12-08T06:00:00Z", "rotating": true}
  ]},
  "ledger": {"channel": "demo", "height": 42, "leader": "member-b", "raft_state": "StateFollower", "state": "active", "term": 5}
}`

const wantApplianceTable = `member-a (appliance), consortium demo, policy version 3 (sha256:32b1fa1ad886…)
identity  CN=member-a-appliance,O=member-a, serial 7, expires 2026-12-19 (in 12d0h)
tunnel    100.64.0.1, mtu 1200

RELAY    ADDRESS             STATE  PATH   IN USE  RTT    SINCE
relay-1  relay1.example:443  up     quic   yes     1.5ms  2m0s ago
relay-2  relay2.example:443  up     proxy          23ms   3h0m ago
relay-3  relay3.example:443  down   -              -      30s ago

PEER      OVERLAY     HANDSHAKE  KEY ATTESTATION
member-b  100.64.0.2  12s ago    expires in 2d0h
member-c  100.64.0.3  never      expires in 18h0m, rotating

CHANNEL  ROLE      HEIGHT  LEADER    TERM  STATE
demo     follower  42      member-b  5     active

WARNINGS (1)
  ! identity certificate /etc/memberd/identity/cert.pem (serial 7) expires in 12d0h, on 2026-12-19T12:00:00Z: renew it
`

const cannedRelayStatus = `{"role": "relay", "id": "relay-1", "listen": "[::]:443", "warnings": [],
  "members": ["member-b", "member-a"], "drops": {"acl": 3, "queue_full": 0}, "policy_version": 2}`

const wantRelayTable = `relay-1 (relay), listening on [::]:443, policy version 2

members connected (2): member-a member-b
drops: acl=3

no warnings
`

// TestStatusTable renders canned /status documents of an appliance (three
// relays on three paths, one down; a peer without a handshake; a ledger
// follower) and of a relay, as 'memberd status' prints them.
func TestStatusTable(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"appliance", cannedApplianceStatus, wantApplianceTable},
		{"relay", cannedRelayStatus, wantRelayTable},
		{"appliance without ledger", strings.Replace(cannedRelayStatus, `"role": "relay"`, `"role": "appliance", "ledger": "not configured (no ledger section)"`, 1), ""},
		{"appliance with member addresses", strings.Replace(cannedApplianceStatus, `"addr": "100.64.0.2",`, `"addr": "100.64.0.2", "member_addr": "127.77.0.2",`, 1),
			strings.Replace(strings.Replace(strings.Replace(wantApplianceTable,
				"PEER      OVERLAY     HANDSHAKE  KEY ATTESTATION\n", "PEER      OVERLAY     LOCAL ADDR  HANDSHAKE  KEY ATTESTATION\n", 1),
				"member-b  100.64.0.2  12s ago ", "member-b  100.64.0.2  127.77.0.2  12s ago ", 1),
				"member-c  100.64.0.3  never   ", "member-c  100.64.0.3  -           never   ", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := renderStatus(&b, []byte(tc.doc), statusNow); err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if !strings.Contains(b.String(), "ledger: not configured (no ledger section)\n") {
					t.Fatalf("no ledger line in:\n%s", b.String())
				}
				return
			}
			if b.String() != tc.want {
				t.Fatalf("got:\n%s\nwant:\n%s", b.String(), tc.want)
			}
		})
	}
}

func TestStatusWarnings(t *testing.T) {
	t.Run("udp buffers", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "net/core"), 0o755); err != nil {
			t.Fatal(err)
		}
		if w := udpBufferWarnings(dir); len(w) != 0 {
			t.Fatalf("unreadable limits: %q", w)
		}
		for name, v := range map[string]string{"rmem_max": "212992\n", "wmem_max": "8388608\n"} {
			if err := os.WriteFile(filepath.Join(dir, "net/core", name), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		w := udpBufferWarnings(dir)
		if len(w) != 1 || !strings.Contains(w[0], "net.core.rmem_max is 212992 bytes, below the 7500000") ||
			!strings.Contains(w[0], "sysctl -w net.core.rmem_max=7500000") {
			t.Fatalf("warnings %q, want one naming net.core.rmem_max and the fix", w)
		}
	})
	t.Run("certificate", func(t *testing.T) {
		cert := func(left time.Duration) *x509.Certificate {
			return &x509.Certificate{SerialNumber: big.NewInt(99), NotAfter: statusNow.Add(left)}
		}
		for _, tc := range []struct {
			name string
			c    *x509.Certificate
			want string
		}{
			{"none", nil, ""},
			{"a year", cert(365 * 24 * time.Hour), ""},
			{"31 days", cert(31 * 24 * time.Hour), ""},
			{"29 days", cert(29*24*time.Hour + 3*time.Hour), "identity certificate c.pem (serial 99) expires in 29d3h, on 2027-01-05T15:00:00Z: renew"},
			{"an hour", cert(time.Hour), "expires in 1h0m"},
			{"expired", cert(-time.Minute), "identity certificate c.pem (serial 99) EXPIRED on 2026-12-07T11:59:00Z: peers and relays refuse it; renew"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got := certificateWarning("identity certificate c.pem", tc.c, statusNow, "renew")
				if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
			})
		}
	})
	t.Run("relays", func(t *testing.T) {
		up := relay.RelayStatus{ID: "r1", Addr: "a:443", State: "up"}
		down := relay.RelayStatus{ID: "r2", Addr: "b:443", State: "down", LastError: "dial tcp b:443: i/o timeout"}
		connecting := relay.RelayStatus{ID: "r3", Addr: "c:443", State: "connecting"}
		if w := relayWarnings([]relay.RelayStatus{up}); len(w) != 0 {
			t.Fatalf("all up: %q", w)
		}
		if w := relayWarnings([]relay.RelayStatus{up, down}); len(w) != 1 || w[0] != "relay r2 (b:443) is down: dial tcp b:443: i/o timeout" {
			t.Fatalf("one down: %q", w)
		}
		w := relayWarnings([]relay.RelayStatus{connecting, down})
		if len(w) != 3 || !strings.HasPrefix(w[0], "no relay connected") || w[1] != "relay r3 (c:443) is connecting" {
			t.Fatalf("none up: %q", w)
		}
	})
	t.Run("ledger", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			st   any
			want string
		}{
			{"not configured", "not configured (no ledger section)", ""},
			{"active with leader", map[string]any{"state": "active", "leader": "m1"}, ""},
			{"no leader", map[string]any{"state": "active", "leader": ""}, "no raft leader known"},
			{"closed", map[string]any{"state": "closed"}, "ledger is not active: closed"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				w := ledgerWarnings(tc.st)
				if tc.want == "" && len(w) != 0 || tc.want != "" && (len(w) != 1 || !strings.Contains(w[0], tc.want)) {
					t.Fatalf("got %q, want %q", w, tc.want)
				}
			})
		}
	})
}

// checkStatusTable runs 'memberd status' against member's running
// appliance in d (a ledger follower, after traffic) and matches its output
// line by line: the golden layout of wantApplianceTable with the values
// that vary from run to run as patterns.
func checkStatusTable(t *testing.T, d *DemoConsortium, member string) {
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
	if udp := udpBufferWarnings("/proc/sys"); len(udp) > 0 {
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

package statusview

import (
	"bytes"
	"strings"
	"testing"
	"time"
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
		{"appliance with two channels", strings.Replace(cannedApplianceStatus, `"term": 5}`, `"term": 5, "channels": [
		  {"channel": "alpha", "height": 42, "leader": "member-b", "raft_state": "StateFollower", "state": "active", "term": 5},
		  {"channel": "beta", "height": 7, "leader": "member-a", "raft_state": "StateLeader", "state": "active", "term": 2}]}`, 1),
			strings.Replace(wantApplianceTable, "demo     follower  42      member-b  5     active\n",
				"alpha    follower  42      member-b  5     active\nbeta     leader    7       member-a  2     active\n", 1)},
		{"appliance with member addresses", strings.Replace(cannedApplianceStatus, `"addr": "100.64.0.2",`, `"addr": "100.64.0.2", "member_addr": "127.77.0.2",`, 1),
			strings.Replace(strings.Replace(strings.Replace(wantApplianceTable,
				"PEER      OVERLAY     HANDSHAKE  KEY ATTESTATION\n", "PEER      OVERLAY     LOCAL ADDR  HANDSHAKE  KEY ATTESTATION\n", 1),
				"member-b  100.64.0.2  12s ago ", "member-b  100.64.0.2  127.77.0.2  12s ago ", 1),
				"member-c  100.64.0.3  never   ", "member-c  100.64.0.3  -           never   ", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := Render(&b, []byte(tc.doc), statusNow); err != nil {
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

package appliance

import (
	"strings"
	"testing"

	"github.com/memberd/memberd/relay"
)

// TestStatusWarnings: the appliance's own /status warnings (relays,
// ledger); internal/daemon tests the shared ones.
func TestStatusWarnings(t *testing.T) {
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
			{"policy behind the consenters", map[string]any{"state": "active", "leader": "m1", "policy_version": uint64(3), "consenters_policy_version": uint64(4)},
				"policy is version 3, older than version 4"},
			{"policy ahead of the consenters", map[string]any{"state": "active", "leader": "m1", "policy_version": uint64(5), "consenters_policy_version": uint64(4)}, ""},
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

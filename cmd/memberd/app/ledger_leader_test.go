package app

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/memberd/memberd/internal/appliance"
)

// TestLedgerTransferLeaderOutput: a member that led already is reported
// so (not as a hand-over from the appliance asked), and a hand-over as one.
func TestLedgerTransferLeaderOutput(t *testing.T) {
	already := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(appliance.LeaderTransfer{Channel: "demo", From: "member-a", Leader: r.FormValue("to"), RaftID: 2, Term: 5, Already: already})
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		already bool
		want    string
	}{
		{true, "channel demo: member-b already leads (raft id 2, term 5)"},
		{false, "channel demo: leadership handed from member-a to member-b (raft id 2, term 5)"},
	} {
		already = tc.already
		code, out, stderr := run(t, "ledger", "transfer-leader", "member-b", "--admin", addr)
		if code != ExitOK || strings.TrimSpace(out) != tc.want {
			t.Errorf("already=%v: exit %d, out %q, stderr %q; want %q", tc.already, code, out, stderr, tc.want)
		}
	}
}

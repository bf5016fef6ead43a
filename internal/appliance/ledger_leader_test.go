package appliance

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// TestTransferLeaderHandler: the admin endpoint's leadership transfer
// wants a POST naming the member, and an appliance without a ledger says so.
func TestTransferLeaderHandler(t *testing.T) {
	srv := httptest.NewServer(transferLeaderHandler(&Appliance{}, slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	for _, tc := range []struct {
		name, method, body string
		code               int
		want               string
	}{
		{"get", http.MethodGet, "", http.StatusMethodNotAllowed, "POST with form value to=MEMBER"},
		{"no member", http.MethodPost, "", http.StatusBadRequest, "to=MEMBER is required"},
		{"no ledger", http.MethodPost, url.Values{"to": {"member-b"}}.Encode(), http.StatusNotFound, "no ledger section"},
	} {
		req, err := http.NewRequest(tc.method, srv.URL+TransferLeaderPath, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, resp.StatusCode, b, tc.code, tc.want)
		}
	}
}

// TestTransferLeaderViaAdmin: the client hands the appliance's refusal on
// (status and reason) and reads the answer of a completed transfer.
func TestTransferLeaderViaAdmin(t *testing.T) {
	var to, channel string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		to, channel = r.FormValue("to"), r.FormValue("channel")
		if to == "member-c" {
			http.Error(w, "this node does not lead the channel: member-b leads it", http.StatusConflict)
			return
		}
		json.NewEncoder(w).Encode(LeaderTransfer{Channel: "demo", From: "member-a", Leader: to, RaftID: 4, Term: 3})
	}))
	addr := strings.TrimPrefix(srv.URL, "http://")
	res, err := TransferLeaderViaAdmin(context.Background(), addr, "", "member-d")
	if err != nil || res.Leader != "member-d" || res.From != "member-a" || to != "member-d" || channel != "" {
		t.Fatalf("transfer to member-d: %+v, %v (server got to=%q channel=%q)", res, err, to, channel)
	}
	if _, err := TransferLeaderViaAdmin(context.Background(), addr, "beta", "member-d"); err != nil || channel != "beta" {
		t.Fatalf("transfer on channel beta: %v (server got channel=%q)", err, channel)
	}
	if _, err := TransferLeaderViaAdmin(context.Background(), addr, "", "member-c"); err == nil || !strings.Contains(err.Error(), "409") || !strings.Contains(err.Error(), "member-b leads it") {
		t.Fatalf("refused transfer: %v, want the 409 and its reason", err)
	}
	srv.Close()
	if _, err := TransferLeaderViaAdmin(context.Background(), addr, "", "member-d"); err == nil || !strings.Contains(err.Error(), "no appliance answers") {
		t.Fatalf("closed endpoint: %v", err)
	}
}

// TestTransferLeaderUnknownChannel: on an appliance that orders alpha and
// beta, a transfer naming another channel is refused (400) with the
// channels it does order.
func TestTransferLeaderUnknownChannel(t *testing.T) {
	a := &Appliance{ledger: &ledgerRun{member: "member-a", channel: "alpha", names: []string{"alpha", "beta"}}}
	srv := httptest.NewServer(transferLeaderHandler(a, slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	resp, err := http.PostForm(srv.URL+TransferLeaderPath, url.Values{"to": {"member-b"}, "channel": {"gamma"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), `orders no channel "gamma" (it orders: alpha, beta)`) {
		t.Fatalf("transfer on gamma: %d %q", resp.StatusCode, b)
	}
}

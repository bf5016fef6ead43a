package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/internal/authority"
	"github.com/memberd/memberd/internal/demo"
)

// TestLedgerInAppliance runs the demo consortium (insecure file keys, real
// relays on loopback) with a ledger node in every appliance: envelopes
// submitted to a FOLLOWER are forwarded to the leader over the tunnel and
// ordered; every member serves the same verified blocks; the 'memberd
// ledger' commands work against a running appliance; /status, /readyz and
// the participation API show the ledger.
func TestLedgerInAppliance(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a consortium (test/consortium covers the ledger under -short)")
	}
	dir := filepath.Join(t.TempDir(), "demo")
	L, err := demo.Init(demo.Options{Dir: dir, Members: 3, Relays: 2, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	d, ctx := startDemo(t, L, 2*time.Minute)
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	var follower string
	for _, m := range L.Members {
		var st struct {
			Ledger struct {
				Channel  string `json:"channel"`
				Leader   string `json:"leader"`
				Height   uint64 `json:"height"`
				State    string `json:"state"`
				RaftID   uint64 `json:"raft_id"`
				Listen   string `json:"listen"`
				RaftPort uint16 `json:"raft_port"`
			} `json:"ledger"`
		}
		getJSON(t, "http://"+d.AdminAddr(m)+"/status", &st)
		l := st.Ledger
		if l.Channel != "demo" || l.Leader == "" || l.Height < 1 || l.State != "active" || l.Listen != d.LedgerAddr(m) || l.RaftPort != demo.LedgerRaftPort {
			t.Fatalf("%s /status ledger: %+v", m, l)
		}
		if l.Leader != m && follower == "" {
			follower = m
		}
		resp, err := http.Get("http://" + d.AdminAddr(m) + "/readyz?verbose=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s /readyz: %d %s", m, resp.StatusCode, body)
		}
		// The participation API is no longer on the plain-HTTP admin port
		// (osnadmin_test.go covers it, with client certificates).
		resp, err = http.Get("http://" + d.AdminAddr(m) + "/participation/v1/channels")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || d.ParticipationAddr(m) == "" {
			t.Fatalf("%s: participation API on the plain admin port: %d (want 404), on %q", m, resp.StatusCode, d.ParticipationAddr(m))
		}
	}
	if follower == "" {
		t.Fatal("no follower found")
	}
	h, err := d.CheckLedger(ctx, follower, 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("20 envelopes through follower %s: height %d on every member", follower, h)
	checkStatusTable(t, d, follower) // 'memberd status' on a real /status
	// /metrics: the follower answered 20 SUCCESS (forwarded to the leader),
	// served the verifying fetch, and every member committed the 20.
	resp, err := http.Get("http://" + d.AdminAddr(follower) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`memberd_ledger_broadcast_total{reason="success",status="SUCCESS"} 20` + "\n",
		`memberd_ledger_deliver_requests_total{status="SUCCESS"} 1` + "\n",
		`memberd_ledger_transactions_total{channel="demo"} 20` + "\n",
		fmt.Sprintf(`memberd_ledger_height{channel="demo"} %d`, h),
		"memberd_ledger_broadcast_commit_seconds_count 20\n", "memberd_ledger_block_append_seconds_count"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics of %s lacks %q", follower, want)
		}
	}

	// The CLI against a running appliance: submit to one member, height
	// from another (TLS server checked against its member CA).
	md := func(m string) string { return filepath.Join(L.Dir, "members", m) }
	a, b := L.Members[0], L.Members[1]
	ident := []string{"--channel", "demo", "--key", "file:" + filepath.Join(md(a), "identity", "key.pem"), "--insecure-file-key",
		"--cert", filepath.Join(md(a), "identity", "cert.pem"), "--msp-id", a + "MSP"}
	code, out, errs := run(t, append([]string{"ledger", "submit", "--data", "from the CLI", "--orderer", d.LedgerAddr(a),
		"--tls-ca", filepath.Join(md(a), "ca.pem")}, ident...)...)
	if code != ExitOK || !strings.HasPrefix(out, "SUCCESS ") {
		t.Fatalf("ledger submit: exit %d out %q err %q", code, out, errs)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out, errs = run(t, append([]string{"ledger", "height", "--orderer", d.LedgerAddr(b),
			"--tls-ca", filepath.Join(md(b), "ca.pem")}, ident...)...)
		// The CLI's envelope is in a block after the h blocks CheckLedger saw.
		if got, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64); code == ExitOK && err == nil && got > h {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger height at %s: exit %d out %q err %q (want > %d)", b, code, out, errs, h)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startDemo runs the demo consortium L until the test ends (or timeout,
// which also bounds the returned context) and waits until every member is
// connected to every relay.
func startDemo(t *testing.T, L *demo.Layout, timeout time.Duration) (*demo.Consortium, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	d, err := demo.Start(ctx, L, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	if err := d.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return d, ctx
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// TestDemoLedgerACL: the demo policy lets every consenter reach every other
// on the ledger's raft and gRPC ports, and nothing else through that rule.
func TestDemoLedgerACL(t *testing.T) {
	L, err := demo.Init(demo.Options{Dir: filepath.Join(t.TempDir(), "demo"), Members: 3, Relays: 1, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	var rule bool
	for _, r := range L.Genesis.Document().ACL {
		if strings.HasPrefix(r.Comment, "ledger:") {
			rule = true
		}
	}
	if !rule {
		t.Fatal("no ledger ACL rule in the demo policy")
	}
	ta := authority.Tunnel(L.Genesis)
	for _, a := range L.Members {
		for _, b := range L.Members {
			if a == b {
				continue
			}
			for _, port := range []uint16{demo.LedgerRaftPort, demo.LedgerPeerPort} {
				if !ta.Allowed(a, b, port) {
					t.Errorf("%s -> %s port %d refused", a, b, port)
				}
			}
		}
	}
	for _, m := range L.Members {
		cfg, err := appliance.LoadConfig(L.MemberConfig[m])
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Ledger == nil || cfg.Ledger.RaftPort != demo.LedgerRaftPort || cfg.Ledger.PeerPort != demo.LedgerPeerPort || cfg.Ledger.GenesisBlock == "" {
			t.Fatalf("%s ledger config: %+v", m, cfg.Ledger)
		}
	}
}

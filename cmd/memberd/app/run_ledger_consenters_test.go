package app

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/policy"
)

// TestLedgerJoinInAppliance: the channel was created with three consenters
// (its genesis block names them) and the policy names a fourth: that
// member's appliance starts with the policy and the genesis block, joins
// the raft cluster under its derived raft ID (the leader adds it), catches
// up and orders; envelopes submitted through it are on every member.
func TestLedgerJoinInAppliance(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a consortium")
	}
	dir := filepath.Join(t.TempDir(), "demo")
	L, err := demo.Init(demo.Options{Dir: dir, Members: 4, Relays: 1, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	newcomer := L.Members[3]
	var doc policy.Document
	if err := yaml.Unmarshal(L.Genesis.DocumentBytes(), &doc); err != nil {
		t.Fatal(err)
	}
	doc.Ledger.Consenters = L.Members[:3]
	for _, m := range doc.Members {
		if m.ID == newcomer {
			m.Roles = slices.DeleteFunc(m.Roles, func(r policy.Role) bool { return r == policy.RoleConsenter })
		}
	}
	b, err := policy.MarshalDocument(&doc)
	if err != nil {
		t.Fatal(err)
	}
	created, err := policy.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	leafs := map[string]*x509.Certificate{}
	for _, m := range L.Members[:3] {
		raw, err := os.ReadFile(filepath.Join(dir, "members", m, "identity", "cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(raw)
		if leafs[m], err = x509.ParseCertificate(blk.Bytes); err != nil {
			t.Fatal(err)
		}
	}
	genesis, err := demo.LedgerGenesis(created, leafs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range L.Members {
		if err := os.WriteFile(filepath.Join(dir, "members", m, demo.LedgerGenesisFile), genesis, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	d, ctx := startDemo(t, L, 2*time.Minute)
	h, err := d.CheckLedger(ctx, newcomer, 10)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Ledger struct {
			RaftID     uint64 `json:"raft_id"`
			State      string `json:"state"`
			Consenters []struct {
				RaftID uint64 `json:"raft_id"`
				Member string `json:"member"`
			} `json:"consenters"`
		} `json:"ledger"`
	}
	getJSON(t, "http://"+d.AdminAddr(newcomer)+"/status", &st)
	if want := orderer.AddedConsenterID("demo", newcomer); st.Ledger.RaftID != want || st.Ledger.State != "active" || len(st.Ledger.Consenters) != 4 {
		t.Fatalf("%s /status ledger: %+v (want raft id %d)", newcomer, st.Ledger, want)
	}
	t.Logf("%s joined as raft id %d; 10 envelopes through it: height %d on every member", newcomer, st.Ledger.RaftID, h)
}

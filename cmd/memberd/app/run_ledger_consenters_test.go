package app

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

func TestPlanLedgerRaft(t *testing.T) {
	cons := policytest.New(t, 4)
	cons.Template.Ledger.Consenters = []string{"m2", "m1", "m4"} // m3 is not a consenter
	for _, m := range cons.Template.Members {
		if m.ID == "m3" {
			m.Roles = []policy.Role{policy.RoleWriter}
		}
	}
	p := cons.Genesis(t)
	peer := func(id uint64, m string) raftlog.Peer { return raftlog.Peer{ID: id, Addr: m + ":7052", Name: m} }
	added := orderer.AddedConsenterID("trade", "m4")
	for _, tc := range []struct {
		name    string
		member  string
		stored  uint64
		genesis []string
		want    ledgerRaft
		err     error
	}{
		{name: "genesis consenter, first start", member: "m1", genesis: []string{"m2", "m1"},
			want: ledgerRaft{id: 2, peers: []raftlog.Peer{peer(1, "m2"), peer(2, "m1")}}},
		{name: "added consenter, first start", member: "m4", genesis: []string{"m2", "m1"},
			want: ledgerRaft{id: added, join: true, peers: []raftlog.Peer{peer(added, "m4")}}},
		{name: "restart: the log's ID, positions as fallback", member: "m1", stored: 2, genesis: []string{"m2", "m1"},
			want: ledgerRaft{id: 2, peers: []raftlog.Peer{peer(1, "m2"), peer(3, "m4"), peer(2, "m1")}}},
		{name: "restart of an added consenter", member: "m4", stored: added,
			want: ledgerRaft{id: added, peers: []raftlog.Peer{peer(1, "m2"), peer(2, "m1"), peer(added, "m4")}}},
		{name: "restart: own ID not taken by a position", member: "m4", stored: 1,
			want: ledgerRaft{id: 1, peers: []raftlog.Peer{peer(2, "m1"), peer(1, "m4")}}},
		{name: "no genesis block: positions", member: "m4",
			want: ledgerRaft{id: 3, peers: []raftlog.Peer{peer(1, "m2"), peer(2, "m1"), peer(3, "m4")}}},
		{name: "not a consenter", member: "m3", genesis: []string{"m2", "m1"}, err: ErrLedger},
		{name: "genesis consenter unknown to the policy", member: "m1", genesis: []string{"", "m1"}, err: ErrLedger},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := planLedgerRaft(tc.member, "trade", tc.stored, p, tc.genesis, 7052)
			if !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if got.id != tc.want.id || got.join != tc.want.join || !slices.Equal(got.peers, tc.want.peers) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

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
	L, err := DemoInit(DemoOptions{Dir: dir, Members: 4, Relays: 1, HSM: "soft"})
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
	genesis, err := demoLedgerGenesis(created, leafs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range L.Members {
		if err := os.WriteFile(filepath.Join(dir, "members", m, demoLedgerGenesisFile), genesis, 0o644); err != nil {
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

package appliance

import (
	"errors"
	"slices"
	"testing"

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

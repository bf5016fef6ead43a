package orderer

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

func TestAddedConsenterID(t *testing.T) {
	a, b := AddedConsenterID("trade", "m4"), AddedConsenterID("trade", "m5")
	if a == b || a>>63 != 1 || b>>63 != 1 {
		t.Fatalf("ids %x %x: want distinct, top bit set", a, b)
	}
	if a != AddedConsenterID("trade", "m4") || a == AddedConsenterID("other", "m4") {
		t.Fatal("id must depend on exactly channel and member")
	}
}

func TestPlanConsenters(t *testing.T) {
	idOf := func(m string) uint64 { return uint64(100 + m[1] - '0') }
	addr := func(m string) string { return m + ":7052" }
	// view: members "m1:1 m2:2 ..." with progress: "!" = not caught up, "?" = no name.
	view := func(self uint64, spec ...string) ConsenterView {
		v := ConsenterView{Self: self, Progress: map[uint64]raftlog.Progress{}}
		for _, s := range spec {
			var name string
			var id uint64
			lag := strings.HasSuffix(s, "!")
			s = strings.TrimSuffix(s, "!")
			fmt.Sscanf(strings.Replace(s, ":", " ", 1), "%s %d", &name, &id)
			if name == "?" {
				name = ""
			}
			v.Members = append(v.Members, raftlog.Peer{ID: id, Name: name})
			pr := raftlog.Progress{Match: 5000, Active: true}
			if lag {
				pr = raftlog.Progress{Match: 10, Active: true}
			}
			v.Progress[id] = pr
		}
		return v
	}
	add := func(m string) string { return fmt.Sprintf("add %s (raft id %d, %s)", m, idOf(m), addr(m)) }
	rm := func(m string, id uint64) string { return fmt.Sprintf("remove %s (raft id %d)", m, id) }
	for _, tc := range []struct {
		name     string
		view     ConsenterView
		want     []string
		pending  []string
		next     bool   // Next is set (= Pending[0])
		transfer uint64 // TransferTo
		wait     string // substring of Wait
		warn     string // substring of one warning
		err      error
	}{
		{name: "no change", view: view(1, "m1:1", "m2:2", "m3:3"), want: []string{"m3", "m1", "m2"}},
		{name: "add one", view: view(1, "m1:1", "m2:2", "m3:3"), want: []string{"m1", "m2", "m3", "m4"},
			pending: []string{add("m4")}, next: true, warn: "no consenter may fail"},
		{name: "add before remove", view: view(1, "m1:1", "m2:2", "m3:3"), want: []string{"m1", "m3", "m4"},
			pending: []string{add("m4"), rm("m2", 2)}, next: true},
		{name: "remove from the middle", view: view(1, "m1:1", "m2:2", "m3:3", "m4:104"), want: []string{"m1", "m3", "m4"},
			pending: []string{rm("m2", 2)}, next: true},
		{name: "remove self last, transfer first", view: view(1, "m1:1", "m2:2", "m3:3", "m4:104"), want: []string{"m2", "m4"},
			pending: []string{rm("m3", 3), rm("m1", 1)}, next: true},
		{name: "remove self: transfer to a caught-up staying voter", view: view(1, "m1:1", "m2:2!", "m3:3", "m4:104"), want: []string{"m2", "m3", "m4"},
			pending: []string{rm("m1", 1)}, next: true, transfer: 3},
		{name: "remove self: nobody to hand over to", view: view(1, "m1:1", "m2:2!"), want: []string{"m2"},
			pending: []string{rm("m1", 1)}, wait: "below a quorum"},
		{name: "second add while the first catches up", view: view(1, "m1:1", "m2:2", "m3:3", "m4:104!"), want: []string{"m1", "m2", "m3", "m4", "m5"},
			pending: []string{add("m5")}, next: true, warn: "no consenter may fail"},
		{name: "third add would lose quorum", view: view(1, "m1:1", "m2:2", "m3:3", "m4:104!", "m5:105!"), want: []string{"m1", "m2", "m3", "m4", "m5", "m6"},
			pending: []string{add("m6")}, wait: "waiting for consenters to catch up"},
		{name: "remove a lagging voter", view: view(1, "m1:1", "m2:2", "m3:3", "m4:104!"), want: []string{"m1", "m2", "m3"},
			pending: []string{rm("m4", 104)}, next: true},
		{name: "remove a healthy voter while another lags", view: view(1, "m1:1", "m2:2", "m3:3!"), want: []string{"m1", "m3"},
			pending: []string{rm("m2", 2)}, wait: "below a quorum"},
		{name: "down to two consenters", view: view(1, "m1:1", "m2:2", "m3:3"), want: []string{"m1", "m2"},
			pending: []string{rm("m3", 3)}, next: true, warn: "tolerates no failed consenter"},
		{name: "unnamed voter: no change", view: view(1, "m1:1", "m2:2", "?:3"), want: []string{"m1", "m2", "m4"},
			pending: []string{add("m4")}, wait: "no recorded member id"},
		{name: "no consenters", view: view(1, "m1:1"), want: nil, err: ErrConsenters},
		{name: "listed twice", view: view(1, "m1:1"), want: []string{"m1", "m1"}, err: ErrConsenters},
		{name: "id taken", view: view(1, "m1:1", "m2:2", "x:104"), want: []string{"m1", "m2", "x", "m4"}, err: ErrConsenters},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := PlanConsenters(tc.view, tc.want, idOf, addr)
			if !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			var got []string
			for _, c := range plan.Pending {
				got = append(got, c.String())
			}
			if !slices.Equal(got, tc.pending) {
				t.Errorf("pending %q, want %q", got, tc.pending)
			}
			if (plan.Next != nil) != tc.next || (plan.Next != nil && *plan.Next != plan.Pending[0]) {
				t.Errorf("next %v, want set=%v (wait %q)", plan.Next, tc.next, plan.Wait)
			}
			if plan.TransferTo != tc.transfer {
				t.Errorf("transfer to %d, want %d", plan.TransferTo, tc.transfer)
			}
			if !strings.Contains(plan.Wait, tc.wait) || (tc.wait == "") != (plan.Wait == "") {
				t.Errorf("wait %q, want %q", plan.Wait, tc.wait)
			}
			if tc.warn != "" && !slices.ContainsFunc(plan.Warnings, func(w string) bool { return strings.Contains(w, tc.warn) }) {
				t.Errorf("warnings %q, want one with %q", plan.Warnings, tc.warn)
			}
		})
	}
}

func TestConsenterID(t *testing.T) {
	g := []string{"m3", "m1", "m2"}
	for _, tc := range []struct {
		member string
		voters []raftlog.Peer
		want   uint64
	}{
		{"m3", nil, 1},
		{"m2", []raftlog.Peer{{ID: 1, Name: "m3"}}, 3},
		{"m4", nil, AddedConsenterID("trade", "m4")},
		// The log says ID 1 is m1: the genesis block's order is not the IDs'.
		{"m2", []raftlog.Peer{{ID: 1, Name: "m1"}}, AddedConsenterID("trade", "m2")},
		{"m2", []raftlog.Peer{{ID: AddedConsenterID("trade", "m9"), Name: "m9"}, {ID: 2, Name: ""}}, 3},
	} {
		if got := ConsenterID(TrustedGenesis(g, tc.voters), "trade", tc.member); got != tc.want {
			t.Errorf("ConsenterID(%s, voters %v) = %d, want %d", tc.member, tc.voters, got, tc.want)
		}
	}
}

func TestGenesisConsenters(t *testing.T) {
	// ledger.consenters in another order than the members: the genesis
	// block keeps the consenters' order.
	c := newConsortium(t, 3, testBatch(), func(d *policy.Document) { d.Ledger.Consenters = []string{"m3", "m1", "m2"} })
	got, err := GenesisConsenters(c.pol, c.genesis)
	if err != nil || !slices.Equal(got, []string{"m3", "m1", "m2"}) {
		t.Fatalf("GenesisConsenters: %q %v", got, err)
	}
	// A member the policy no longer knows is "".
	other := newConsortium(t, 3, testBatch())
	if got, _ := GenesisConsenters(other.pol, c.genesis); !slices.Equal(got, []string{"", "", ""}) {
		t.Fatalf("unknown members: %q", got)
	}
}

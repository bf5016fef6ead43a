package consortium_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/cmd/memberd/app"
	"github.com/memberd/memberd/policy"
)

type ledgerStatus struct {
	Leader            string `json:"leader"`
	CertificateSerial string `json:"certificate_serial"`
	State             string `json:"state"`
	Height            uint64 `json:"height"`
	Consenters        []struct {
		RaftID uint64 `json:"raft_id"`
		Member string `json:"member"`
	} `json:"consenters"`
}

func statusOf(t *testing.T, d *app.DemoConsortium, m string) ledgerStatus {
	t.Helper()
	var st struct {
		Ledger ledgerStatus `json:"ledger"`
	}
	resp, err := http.Get("http://" + d.AdminAddr(m) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Ledger
}

// setConsenters is the policy after prev with ledger.consenters = ids (and
// the consenter role on exactly those members), signed by every member.
func setConsenters(t *testing.T, L *app.DemoLayout, prev *policy.Policy, ids ...string) *policy.Policy {
	return nextPolicy(t, L, prev, func(d *policy.Document) {
		d.Ledger.Consenters = ids
		for _, m := range d.Members {
			m.Roles = slices.DeleteFunc(m.Roles, func(r policy.Role) bool { return r == policy.RoleConsenter })
			if slices.Contains(ids, m.ID) {
				m.Roles = append(m.Roles, policy.RoleConsenter)
			}
		}
	}, L.Members...)
}

// TestLedgerConsentersOverTunnel: 4 members on 2 relays, every appliance a
// consenter. A signed policy pushed through the tunnel removes the raft
// leader's member from ledger.consenters: leadership moves, the removed
// appliance says so in /status and stops ordering, the other three order
// and serve identical blocks. The next version adds it back: it gets its
// raft ID back, catches up and orders again with the others.
func TestLedgerConsentersOverTunnel(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 4-member consortium")
	}
	L := initConsortium(t, 4, 2)
	d := start(t, L, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := d.CheckLedger(ctx, L.Members[0], 5); err != nil {
		t.Fatal(err)
	}
	push := func(p *policy.Policy) {
		t.Helper()
		res, err := d.PushPolicy(ctx, L.Members[0], p.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if !r.OK {
				t.Fatalf("push of v%d to %s: %s", p.Version(), r.Member, r.Detail)
			}
		}
		if err := d.DropRelayPolicy(p.Marshal()); err != nil {
			t.Fatal(err)
		}
	}

	gone := statusOf(t, d, L.Members[0]).Leader
	if gone == "" {
		t.Fatal("no leader")
	}
	var rest []string
	for _, m := range L.Members {
		if m != gone {
			rest = append(rest, m)
		}
	}
	v2 := setConsenters(t, L, L.Genesis, rest...)
	push(v2)
	waitFor(t, 30*time.Second, gone+" removed", func() bool {
		return strings.Contains(statusOf(t, d, gone).State, "removed")
	})
	waitFor(t, 30*time.Second, "a new leader among "+strings.Join(rest, ","), func() bool {
		l := statusOf(t, d, rest[0]).Leader
		return l != "" && l != gone && len(statusOf(t, d, rest[0]).Consenters) == 3
	})
	t.Logf("v2 removed the leader %s: new leader %s; %s: %s", gone, statusOf(t, d, rest[0]).Leader, gone, statusOf(t, d, gone).State)
	if _, err := d.LedgerSubmit(ctx, gone, 1); err == nil || !strings.Contains(err.Error(), "SERVICE_UNAVAILABLE") {
		t.Fatalf("submit to the removed %s: %v", gone, err)
	}
	var txids []string
	for tries := 0; ; tries++ {
		ids, err := d.LedgerSubmit(ctx, rest[1], 10)
		if err == nil {
			txids = ids
			break
		}
		if tries > 50 {
			t.Fatalf("submit after removal: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkSame := func(members []string, txids []string) uint64 {
		t.Helper()
		var height uint64
		for _, m := range members {
			height = max(height, statusOf(t, d, m).Height)
		}
		var ref [][]byte
		for _, m := range members {
			hashes, txs, err := d.LedgerFetch(ctx, m, height)
			if err != nil {
				t.Fatalf("fetch from %s: %v", m, err)
			}
			for _, id := range txids {
				if !txs[id] {
					t.Fatalf("%s: SUCCESS-answered tx %s missing", m, id)
				}
			}
			if ref == nil {
				ref = hashes
			}
			for i := range ref {
				if !bytes.Equal(ref[i], hashes[i]) {
					t.Fatalf("block %d differs on %s", i, m)
				}
			}
		}
		return height
	}
	h := checkSame(rest, txids)
	t.Logf("three consenters ordered on: height %d", h)

	// Added back: its genesis raft ID again; it catches up and orders.
	push(setConsenters(t, L, v2, L.Members...))
	waitFor(t, 60*time.Second, gone+" active again", func() bool {
		st := statusOf(t, d, gone)
		return st.State == "active" && len(st.Consenters) == 4 && st.Height >= h
	})
	if _, err := d.CheckLedger(ctx, gone, 5); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s re-added and caught up: %+v", gone, statusOf(t, d, gone))
}

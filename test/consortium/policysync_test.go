package consortium_test

import (
	"slices"
	"testing"
	"time"

	"github.com/memberd/memberd/policy"
)

// TestRelaysLearnPolicyFromMembers: nobody copies anything into the relays'
// policy folders. 'memberd policy push' of v2, which removes member C,
// reaches the members through the tunnel; their relay clients offer it to
// the relays, which verify it against their own policy, apply it and cut C
// off. A relay that was down during the push catches up from the members
// that reconnect to it after its restart.
func TestRelaysLearnPolicyFromMembers(t *testing.T) {
	L, d, ctx := startEchoing(t, 3, 2, 2*time.Minute)
	a, b, c := L.Members[0], L.Members[1], L.Members[2]
	r1, r2 := L.Relays[0], L.Relays[1]
	x := openConn(t, ctx, d, b, c, 7051)

	// relay-2 is down while the new version goes round.
	if err := d.StopRelay(r2); err != nil {
		t.Fatal(err)
	}
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) {
		doc.Members = slices.DeleteFunc(doc.Members, func(m *policy.Member) bool { return m.ID == c })
		doc.Ledger.Consenters = []string{a, b}
	}, a, b, c)
	res, err := d.PushPolicy(ctx, a, v2.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		t.Logf("push v2: %s: ok=%v %s", r.Member, r.OK, r.Detail)
	}
	start := time.Now()
	waitFor(t, 20*time.Second, "members A and B on policy v2", func() bool {
		return d.PolicyVersion(a) == 2 && d.PolicyVersion(b) == 2
	})
	waitFor(t, 20*time.Second, "relay-1 on policy v2, from its members", func() bool { return d.RelayPolicyVersion(r1) == 2 })
	t.Logf("relay-1 applied v2 %v after the push", time.Since(start))
	cutOnRelay := func(id string) func() bool {
		return func() bool {
			for _, s := range d.RelayStatus(c) {
				if s.ID == id && s.State == "up" {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, 10*time.Second, "relay-1 to drop member C", cutOnRelay(r1))
	expectClosed(t, x, "B's connection to removed member C")
	if v := d.RelayPolicyVersion(r2); v != 1 {
		t.Fatalf("relay-2 was down but holds policy v%d", v)
	}

	// relay-2 comes back with v1: the members that reconnect offer v2.
	if err := d.StartRelay(ctx, r2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 45*time.Second, "relay-2 to catch up to policy v2", func() bool { return d.RelayPolicyVersion(r2) == 2 })
	waitFor(t, 10*time.Second, "relay-2 to refuse member C", cutOnRelay(r2))
	time.Sleep(time.Second) // C's client keeps redialling: it must stay out
	for _, s := range d.RelayStatus(c) {
		if s.State == "up" {
			t.Fatalf("removed member C attached to %s after the relays learned v2: %+v", s.ID, s)
		}
		t.Logf("C on %s: %s (%s)", s.ID, s.State, s.LastError)
	}
	expectCutOff(t, ctx, d, c, b, a)
}

package relay

import (
	"testing"
	"time"
)

// TestStatusFollowsFailover: when a relay dies without a word (QUIC just
// goes silent), Status follows the routing in the same snapshot: the
// other relay reads backup while packets are copied to it, and the dead
// one "down" once it is no longer used, not "up" until the connection is
// finally given up (4×DeadAfter). Issue #11 item 6: `memberd status` showed a dead relay as
// up for 4-5 s after traffic had moved.
func TestStatusFollowsFailover(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1", "relay-2"})
	r1 := n.startRelay("relay-1", nil)
	n.startRelay("relay-2", nil)
	a, b := n.member("bank-a", nil), n.member("bank-b", nil)
	waitReady(t, a, b)
	waitFor(t, 5*time.Second, "bank-a up on both relays", func() bool {
		s := a.Status()
		return s[0].State == "up" && s[1].State == "up" && s[0].Active
	})
	crashed := time.Now()
	r1.Crash()
	var copied, moved, down time.Duration
	var movedIn, downIn int // the snapshot in which each was first seen
	snap := 0
	at := func(d *time.Duration, in *int, cond bool, elapsed time.Duration) {
		if *d == 0 && cond {
			*d, *in = elapsed, snap
		}
	}
	for time.Since(crashed) < 6*time.Second && down == 0 {
		snap++
		s := a.Status()
		elapsed := time.Since(crashed)
		switch {
		case s[0].State == "up" && !s[0].Healthy:
			t.Fatalf("%v after the crash: relay-1 reported up while not used for sending: %s", time.Since(crashed), fmtStatus(s))
		case s[0].State == "down" && s[0].Healthy:
			t.Fatalf("%v after the crash: relay-1 reported %s: %s", time.Since(crashed), s[0].State, fmtStatus(s))
		}
		at(&copied, new(int), s[1].Backup, elapsed)
		at(&moved, &movedIn, !s[0].Active, elapsed)
		at(&down, &downIn, s[0].State == "down", elapsed)
		if down != 0 {
			t.Logf("relay-1 down: since %v after the crash: %s", s[0].Since.Sub(crashed).Round(time.Millisecond), s[0].LastError)
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("relay-1 crashed: packets copied to relay-2 (backup) after %v; relay-1 unused after %v, status down after %v",
		copied, moved, down)
	if copied == 0 || moved == 0 || down == 0 {
		t.Fatalf("within 6s: copied %v, moved %v, down %v (0 = never)", copied, moved, down)
	}
	if downIn != movedIn {
		t.Errorf("status said down in snapshot %d (%v after the crash), traffic left relay-1 in snapshot %d (%v): want the same",
			downIn, down, movedIn, moved)
	}
}

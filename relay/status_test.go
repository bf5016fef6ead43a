package relay

import (
	"testing"
	"time"
)

// TestStatusFollowsFailover: when a relay dies without a word (QUIC just
// goes silent), Status follows the routing in the same snapshot: "quiet"
// while packets are also copied to the other relay, "down" once it is no
// longer used, not "up" until the connection is finally given up
// (4×DeadAfter). Issue #11 item 6: `memberd status` showed a dead relay as
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
	r1.crash()
	var copied, quiet, moved, down time.Duration
	at := func(d *time.Duration, cond bool) {
		if *d == 0 && cond {
			*d = time.Since(crashed)
		}
	}
	for time.Since(crashed) < 6*time.Second && down == 0 {
		s := a.Status()
		switch {
		case s[0].State == "up" && (!s[0].Healthy || s[1].Backup):
			t.Fatalf("%v after the crash: relay-1 reported up while traffic avoids it: %s", time.Since(crashed), fmtStatus(s))
		case s[0].State == "quiet" && !s[1].Backup, s[0].State == "down" && s[0].Healthy:
			t.Fatalf("%v after the crash: relay-1 reported %s: %s", time.Since(crashed), s[0].State, fmtStatus(s))
		}
		at(&copied, s[1].Backup)
		at(&quiet, s[0].State == "quiet")
		at(&moved, !s[0].Active)
		at(&down, s[0].State == "down")
		if down != 0 {
			t.Logf("relay-1 down: since %v after the crash: %s", s[0].Since.Sub(crashed).Round(time.Millisecond), s[0].LastError)
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("relay-1 crashed: packets copied to relay-2 after %v, status quiet after %v; relay-1 unused after %v, status down after %v",
		copied, quiet, moved, down)
	if moved == 0 || down == 0 || quiet == 0 {
		t.Fatalf("within 6s: copied %v, quiet %v, moved %v, down %v (0 = never)", copied, quiet, moved, down)
	}
}

package relay

import (
	"testing"
	"time"
)

// TestStatusFollowsFailover: when a relay dies without a word (QUIC just
// goes silent), Status reports it down in the same snapshot in which the
// traffic leaves it, not when the connection is finally given up
// (4×DeadAfter later). Issue #11 item 6: `memberd status` showed a dead
// relay as up for 4-5 s after traffic had moved.
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
	var moved, down time.Duration
	deadline := crashed.Add(6 * time.Second)
	for time.Now().Before(deadline) && (moved == 0 || down == 0) {
		s := a.Status()
		since := time.Since(crashed)
		if s[0].State == "up" && !s[0].Healthy {
			t.Fatalf("%v after the crash: relay-1 reported up but not used for sending: %s", since, fmtStatus(s))
		}
		if moved == 0 && !s[0].Active {
			moved = since
		}
		if down == 0 && s[0].State != "up" {
			down = since
			if s[0].LastError == "" {
				t.Errorf("relay-1 down without a reason: %+v", s[0])
			}
			t.Logf("relay-1 as reported: state %s since %v after the crash: %s", s[0].State, s[0].Since.Sub(crashed).Round(time.Millisecond), s[0].LastError)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("relay-1 crashed: traffic left it after %v, status said down after %v", moved, down)
	if moved == 0 || down == 0 {
		t.Fatalf("within 6s: traffic moved after %v, status down after %v (0 = never)", moved, down)
	}
	if d := down - moved; d > 50*time.Millisecond || d < -50*time.Millisecond {
		t.Errorf("status said down %v after the traffic moved, want the same moment (±50ms)", d)
	}
}

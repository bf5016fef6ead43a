package core

import (
	"testing"
	"time"
)

func TestRequestLimiter(t *testing.T) {
	l := requestLimiter{every: time.Second}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		name   string
		member string
		at     time.Duration
		want   bool
	}{
		{"burst 1", "bank-a", 0, true},
		{"burst 2", "bank-a", 0, true},
		{"burst 3", "bank-a", 10 * time.Millisecond, true},
		{"burst spent", "bank-a", 20 * time.Millisecond, false},
		{"other member has its own share", "bank-b", 20 * time.Millisecond, true},
		{"still spent", "bank-a", 900 * time.Millisecond, false},
		{"one interval later", "bank-a", time.Second, true},
		{"only one per interval", "bank-a", 1100 * time.Millisecond, false},
		{"after a quiet spell the burst is back", "bank-a", 10 * time.Second, true},
		{"burst 2 again", "bank-a", 10 * time.Second, true},
		{"burst 3 again", "bank-a", 10 * time.Second, true},
		{"spent again", "bank-a", 10 * time.Second, false},
	}
	for _, s := range steps {
		if got := l.allow(s.member, t0.Add(s.at)); got != s.want {
			t.Fatalf("%s: allow(%s, +%v) = %v, want %v", s.name, s.member, s.at, got, s.want)
		}
	}
	l.forget(func(m string) bool { return m == "bank-b" })
	if _, ok := l.tat["bank-a"]; ok || len(l.tat) != 1 {
		t.Fatalf("forget kept %v", l.tat)
	}
}

// TestRequestLimiterFlood: however fast the requests come, the answers in
// a window are bounded by the burst plus one per interval.
func TestRequestLimiterFlood(t *testing.T) {
	l := requestLimiter{every: time.Second}
	t0 := time.Unix(1000, 0)
	answered := 0
	for i := range 10000 {
		if l.allow("bank-a", t0.Add(time.Duration(i)*time.Millisecond)) { // 10 s
			answered++
		}
	}
	if max := requestBurst + 10; answered > max {
		t.Fatalf("%d answers to 10000 requests in 10 s, want <= %d", answered, max)
	}
}

package demostory

import (
	"testing"
	"time"
)

// TestStreamAround checks the failover figure: answers after the kill and
// the longest pause between answers around it (not before), or the silence
// since the last answer when none came after.
func TestStreamAround(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	kill := t0.Add(5 * time.Second)
	for _, tc := range []struct {
		name      string
		replies   []time.Time
		wantAfter int
		wantGap   time.Duration
	}{
		{"steady", at(4800, 4850, 4900, 4950, 5000, 5050, 5100), 2, 50 * time.Millisecond},
		{"pause over the kill", at(4900, 4950, 5280, 5300, 5320), 3, 330 * time.Millisecond},
		// A long pause well before the kill is not the failover's.
		{"old pause ignored", at(1000, 3500, 4500, 4600, 5100, 5150), 2, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &stream{replies: tc.replies, lost: 1}
			after, gap, lost := s.around(kill)
			if after != tc.wantAfter || gap != tc.wantGap || lost != 1 {
				t.Errorf("around = %d, %v, %d; want %d, %v, 1", after, gap, lost, tc.wantAfter, tc.wantGap)
			}
		})
	}
	// No answer after the kill: the gap is the silence up to now.
	s := &stream{replies: []time.Time{time.Now().Add(-2 * time.Second)}}
	if after, gap, _ := s.around(time.Now().Add(-time.Second)); after != 0 || gap < 2*time.Second {
		t.Errorf("silent since 2s: around = %d, %v; want 0, ≥2s", after, gap)
	}
}

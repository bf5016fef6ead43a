package relay

import (
	"fmt"
	"testing"
	"time"
)

func TestRecentSent(t *testing.T) {
	var r recentSent
	l1, l2 := &link{}, &link{}
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for i := range 10 {
		l := l1
		if i%2 == 1 {
			l = l2
		}
		r.add(l, []byte(fmt.Sprint("p", i)), at(10*i))
	}
	tests := []struct {
		name  string
		on    *link
		since time.Time
		want  []string
	}{
		{"sent on l1 from 40ms, oldest first", l1, at(40), []string{"p4", "p6", "p8"}},
		{"each frame is resent once", l1, at(0), []string{"p0", "p2"}},
		{"nothing left on l1", l1, at(0), nil},
		{"l2 untouched", l2, at(75), []string{"p9"}},
		{"later than everything", l2, at(1000), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, f := range r.since(tc.on, tc.since) {
				got = append(got, string(f))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRecentSentKeepsTheLastOnes(t *testing.T) {
	var r recentSent
	l := &link{}
	t0 := time.Unix(1000, 0)
	for i := range recentLen + 10 {
		r.add(l, []byte(fmt.Sprint(i)), t0.Add(time.Duration(i)))
	}
	got := r.since(l, t0)
	if len(got) != recentLen || string(got[0]) != "10" || string(got[len(got)-1]) != fmt.Sprint(recentLen+9) {
		t.Fatalf("kept %d frames, %q..%q; want the last %d", len(got), got[0], got[len(got)-1], recentLen)
	}
}

// BenchmarkRecentAdd is the per-packet cost of keeping packets for a
// resend (a copy of the frame under a mutex), paid by WritePacket when
// more than one relay is configured.
func BenchmarkRecentAdd(b *testing.B) {
	for _, size := range []int{100, 1300} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			var r recentSent
			l := &link{}
			f := make([]byte, size)
			now := time.Now()
			b.SetBytes(int64(size))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r.add(l, f, now)
				}
			})
		})
	}
}

// A bulk transfer does not push the small frames (raft heartbeats, TCP
// acknowledgements) out of what is kept: with one ring for all, the
// full-size frames sent after the heartbeats left none of them.
func TestRecentSentKeepsSmallFramesUnderBulk(t *testing.T) {
	var r recentSent
	l := &link{}
	t0 := time.Unix(1000, 0)
	big := make([]byte, 1200)
	for i := range 300 {
		if i < 30 && i%3 == 0 {
			r.add(l, []byte(fmt.Sprint("hb", i/3)), t0.Add(time.Duration(i)))
		}
		r.add(l, big, t0.Add(time.Duration(i)))
	}
	var small []string
	got := r.since(l, t0)
	for _, f := range got {
		if len(f) < len(big) {
			small = append(small, string(f))
		}
	}
	if want := "[hb0 hb1 hb2 hb3 hb4 hb5 hb6 hb7 hb8 hb9]"; fmt.Sprint(small) != want {
		t.Errorf("small frames kept %v, want %v", small, want)
	}
	if n := len(got) - len(small); n != recentLen-len(small) {
		t.Errorf("resent %d full-size frames, want the last %d: %d in all", n, recentLen-len(small), recentLen)
	}
	if string(got[0]) != "hb0" {
		t.Errorf("first frame resent %q, want the oldest, hb0", got[0][:min(len(got[0]), 8)])
	}
}

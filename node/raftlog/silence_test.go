package raftlog

import (
	"testing"
	"time"
)

func TestSilence(t *testing.T) {
	const s = int64(time.Second)
	for _, tc := range []struct {
		name                 string
		now, waiting, heard  int64
		written              int
		wantAnswered, wantSi bool
	}{
		{"nothing written", 10 * s, 0, 0, 0, false, false},
		{"answered after the write", 10 * s, 5 * s, 5*s + 1, 100, true, false},
		{"heartbeats unanswered for an election timeout", 10 * s, 8 * s, 7 * s, 300, false, true},
		{"unanswered, not yet an election timeout", 10 * s, 9*s + s/2, 7 * s, 300, false, false},
		// A 1 MiB append on a 256 KiB/s path takes 4 s before the peer
		// can answer: not silent after 3 s, silent after 10 s.
		{"big append on a slow path", 10 * s, 7 * s, 6 * s, 1 << 20, false, false},
		{"big append, silent far beyond its time", 20 * s, 7 * s, 6 * s, 1 << 20, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, si := silence(tc.now, tc.waiting, tc.heard, tc.written, time.Second)
			if a != tc.wantAnswered || si != tc.wantSi {
				t.Errorf("silence = answered %v, silent %v; want %v, %v", a, si, tc.wantAnswered, tc.wantSi)
			}
		})
	}
}

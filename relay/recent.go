package relay

import (
	"sync"
	"time"
)

// recentLen bounds the packets a Client keeps for resending: at the
// ~1 packet per raft message of a quiet consortium it covers seconds; at
// bulk rates only the last milliseconds, where TCP inside the tunnel
// recovers on its own.
const recentLen = 256

// recentSent keeps copies of the last packet frames a Client sent, and
// on which link, so that when the relay in use falls quiet the frames it
// may have swallowed can be sent again through the backup relay. The
// receiver's WireGuard drops those that did arrive (replay window); the
// others turn a loss into a delay for TCP inside the tunnel, which would
// otherwise wait for its retransmission timeout (200ms at least, doubling
// each time a retransmission is lost too) even after the copies began.
type recentSent struct {
	mu    sync.Mutex // guards the fields below
	slots [recentLen]recentFrame
	next  int // slot the next frame goes to
}

type recentFrame struct {
	at    int64 // unix nanos when sent
	on    *link // nil: empty slot
	frame []byte
}

// add records a copy of frame, sent on l at now.
func (r *recentSent) add(l *link, frame []byte, now time.Time) {
	r.mu.Lock()
	s := &r.slots[r.next]
	s.at, s.on = now.UnixNano(), l
	s.frame = append(s.frame[:0], frame...)
	r.next = (r.next + 1) % recentLen
	r.mu.Unlock()
}

// since returns new frames (from newFrame, oldest first) with copies of
// those sent on l at or after t, and forgets them there: each is resent
// at most once.
func (r *recentSent) since(l *link, t time.Time) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	tn := t.UnixNano()
	for i := range recentLen {
		s := &r.slots[(r.next+i)%recentLen]
		if s.on != l || s.at < tn {
			continue
		}
		out = append(out, append(newFrame(len(s.frame)), s.frame...))
		s.on = nil
	}
	return out
}

package relay

import (
	"sync"
	"time"
)

// recentLen bounds the packets a Client keeps for resending, small ones
// (urgentFrame or less) and the others separately: at the ~1 packet per
// raft message of a quiet consortium it covers seconds; at bulk rates only
// the last milliseconds of full-size frames, where TCP inside the tunnel
// recovers on its own, but still the last 256 small ones (raft
// heartbeats and answers, TCP acknowledgements), which a bulk transfer no
// longer pushes out.
const recentLen = 256

// recentSent keeps copies of the last packet frames a Client sent, and
// on which link, so that when the relay in use falls quiet the frames it
// may have swallowed can be sent again through the backup relay. The
// receiver's WireGuard drops those that did arrive (replay window); the
// others turn a loss into a delay for TCP inside the tunnel, which would
// otherwise wait for its retransmission timeout (200ms at least, doubling
// each time a retransmission is lost too) even after the copies began.
//
// Small frames have their own ring: in one ring, a bulk transfer of
// 40 MB/s (~10,000 full-size frames a second) pushed the last 256 frames
// back to 25 ms, and the heartbeats of a quieter connection sent into the
// dead relay before that were not resent: that connection waited for its
// retransmission timeout, doubled, up to 1.8 s (relay/README.md).
type recentSent struct {
	mu    sync.Mutex    // guards the fields below
	rings [2]recentRing // [0]: frames of up to urgentFrame bytes, [1]: the others
}

type recentRing struct {
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
	g := &r.rings[1]
	if len(frame) <= urgentFrame {
		g = &r.rings[0]
	}
	r.mu.Lock()
	s := &g.slots[g.next]
	s.at, s.on = now.UnixNano(), l
	s.frame = append(s.frame[:0], frame...)
	g.next = (g.next + 1) % recentLen
	r.mu.Unlock()
}

// since returns new frames (from newFrame, oldest first) with copies of
// those sent on l at or after t, and forgets them there: each is resent
// at most once. At most recentLen in all, the small ones first: the
// resend burst is no larger than with one ring (it shares the backup
// link's queue with the traffic, QueueLen frames), and the full-size
// frames left out are the oldest, which TCP recovers itself.
func (r *recentSent) since(l *link, t time.Time) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	tn := t.UnixNano()
	var picked [2][]*recentFrame // each ring's, oldest first
	for k := range r.rings {
		g := &r.rings[k]
		for i := range recentLen {
			if s := &g.slots[(g.next+i)%recentLen]; s.on == l && s.at >= tn {
				picked[k] = append(picked[k], s)
			}
		}
	}
	a, b := picked[0], picked[1]
	if extra := len(a) + len(b) - recentLen; extra > 0 {
		b = b[min(extra, len(b)):]
	}
	out := make([][]byte, 0, len(a)+len(b))
	for len(a) > 0 || len(b) > 0 { // merge by send time
		var s *recentFrame
		if len(b) == 0 || (len(a) > 0 && a[0].at <= b[0].at) {
			s, a = a[0], a[1:]
		} else {
			s, b = b[0], b[1:]
		}
		out = append(out, append(newFrame(len(s.frame)), s.frame...))
		s.on = nil
	}
	return out
}

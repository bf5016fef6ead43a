package core

import "time"

// requestBurst is how many attestation requests of one member are answered
// back to back before RequestInterval applies. At start-up two requests
// cross (each member asks while announcing, then asks again once it holds
// the other's key), so a burst of one would delay the pair by an interval.
const requestBurst = 3

// requestLimiter bounds how often this device answers the request flag of
// one member's announcements (each answer sends our attestation, ~1 KB): a
// burst of requestBurst, then one per interval. A member whose request is
// not answered is not stuck: it resends to members that are not ready, with
// backoff from 1 s (the driver's timer loop).
//
// It is a pure core (time passed in, generic cell rate algorithm: one time
// per member) and not safe for concurrent use (Core is). Memory is bounded
// by the members of the policy: only senders of accepted attestations reach
// it, and forget drops members that left.
type requestLimiter struct {
	every time.Duration
	// tat is each member's theoretical arrival time: the request is
	// allowed while tat - now <= (requestBurst-1)*every.
	tat map[string]time.Time
}

// allow reports whether a request from member at now gets an answer, and
// takes its share if so.
func (l *requestLimiter) allow(member string, now time.Time) bool {
	if l.tat == nil {
		l.tat = map[string]time.Time{}
	}
	t := l.tat[member]
	if t.Before(now) {
		t = now
	}
	if t.Sub(now) > (requestBurst-1)*l.every {
		return false
	}
	l.tat[member] = t.Add(l.every)
	return true
}

// forget drops the state of members for which keep is false.
func (l *requestLimiter) forget(keep func(member string) bool) {
	for m := range l.tat {
		if !keep(m) {
			delete(l.tat, m)
		}
	}
}

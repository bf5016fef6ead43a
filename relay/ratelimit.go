package relay

import "time"

// bucket is a token bucket over bytes. It is a pure core: time is an input,
// and it is not safe for concurrent use (the caller locks).
type bucket struct {
	rate   float64 // bytes per second; 0 = unlimited
	burst  float64 // bucket size in bytes
	tokens float64
	last   time.Time
}

func newBucket(rate, burst float64, now time.Time) *bucket {
	return &bucket{rate: rate, burst: burst, tokens: burst, last: now}
}

// allow takes n bytes from the bucket if they are there.
func (b *bucket) allow(n int, now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	b.refill(now)
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// wait is how long after now the bucket will hold n bytes: 0 if it does
// now (or is unlimited), -1 if it never will (n above the burst). It takes
// nothing: the caller waits, then calls allow.
func (b *bucket) wait(n int, now time.Time) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	if float64(n) > b.burst {
		return -1
	}
	b.refill(now)
	if b.tokens >= float64(n) {
		return 0
	}
	// Rounded up, so that allow at now+wait finds the bytes there.
	return time.Duration((float64(n)-b.tokens)/b.rate*float64(time.Second)) + time.Microsecond
}

func (b *bucket) refill(now time.Time) {
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens += dt.Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
		b.last = now
	}
}

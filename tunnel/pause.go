package tunnel

import (
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// pausableTUN is the netstack interface as WireGuard sees it, with reads
// that can be paused until WireGuard has a session to send on.
//
// When this member switches its private key, wireguard-go expires every
// session at once, and until the handshake with the new key completes (a
// round trip) it stages outgoing packets, at most 128 per peer, dropping the
// oldest; the same happens on the other side while it moves the member's
// address to the new key's peer (promote.go). Under a full TCP window that
// was a burst loss at every switch. So WireGuard's reads from netstack wait
// instead, until every awaited key has completed a handshake (promoteLoop
// polls WireGuard for that and calls resume) or the pause's bound passed:
// netstack holds the packets (backpressure) rather than WireGuard dropping
// them. Nothing is held back that could have been sent: there is no
// session to send on meanwhile.
//
// Only WireGuard's TUN reader calls Read; the other methods may be called
// from any goroutine.
type pausableTUN struct {
	tun.Device

	mu      sync.Mutex
	open    chan struct{}     // closed while reads are not paused
	waitFor map[Key]time.Time // awaited key → a handshake after this time
	timer   *time.Timer
	closed  bool
	timeout func() // called when a pause ends by its bound
	// beforeClose, if set, runs before netstack's interface is closed
	// (quiesceTCP).
	beforeClose func()
}

var _ tun.Device = (*pausableTUN)(nil)

// switchPauseMax bounds the pause of an own key switch: a peer that does
// not answer the new handshake (offline, or its relay path down) holds no
// one up longer.
const switchPauseMax = 500 * time.Millisecond

func newPausableTUN(dev tun.Device, timeout func()) *pausableTUN {
	open := make(chan struct{})
	close(open)
	return &pausableTUN{Device: dev, open: open, timeout: timeout}
}

// Read waits while paused, then reads from netstack.
func (t *pausableTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.mu.Lock()
	open := t.open
	t.mu.Unlock()
	<-open
	return t.Device.Read(bufs, sizes, offset)
}

// pause holds reads until each of keys completed a handshake after now
// (resume), at most max. A pause while paused adds keys and restarts the
// bound.
func (t *pausableTUN) pause(keys []Key, now time.Time, max time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(keys) == 0 {
		return
	}
	if t.waitFor == nil {
		t.waitFor = map[Key]time.Time{}
		t.open = make(chan struct{})
	}
	for _, k := range keys {
		t.waitFor[k] = now
	}
	if t.timer != nil {
		t.timer.Stop()
	}
	open := t.open
	t.timer = time.AfterFunc(max, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.open == open && t.waitFor != nil {
			t.openLocked()
			if t.timeout != nil {
				t.timeout()
			}
		}
	})
}

// resume drops the keys whose handshake (by key) came after the pause
// began; reads go on once none is left. It reports whether reads are still
// paused.
func (t *pausableTUN) resume(handshakes map[Key]time.Time) (paused bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, since := range t.waitFor {
		if hs, ok := handshakes[k]; ok && hs.After(since) {
			delete(t.waitFor, k)
		}
	}
	if t.waitFor != nil && len(t.waitFor) == 0 {
		t.openLocked()
	}
	return t.waitFor != nil
}

// replace awaits new instead of old (a peer switched keys during the
// pause: the handshake that ends it comes from its new key).
func (t *pausableTUN) replace(old, new Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if since, ok := t.waitFor[old]; ok {
		delete(t.waitFor, old)
		t.waitFor[new] = since
	}
}

// endPause lets reads go on now.
func (t *pausableTUN) endPause() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.openLocked()
}

func (t *pausableTUN) openLocked() {
	if t.waitFor == nil {
		return
	}
	t.waitFor = nil
	close(t.open)
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
}

// Close ends any pause and closes netstack's interface.
func (t *pausableTUN) Close() error {
	t.mu.Lock()
	t.closed = true
	t.openLocked()
	t.mu.Unlock()
	if t.beforeClose != nil {
		t.beforeClose()
	}
	return t.Device.Close()
}

package tunnel

import (
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2s"
)

// Promotion moves a member's overlay address from its old WireGuard peer to
// the peer of the key it switched to (see peerState).
//
// WireGuard accepts a decrypted packet only from the peer that owns its
// source address, and the switching member sends on the new session as
// soon as it has our handshake response: its old session cannot send any
// more (wireguard-go expires every session when the private key changes).
// Moving the address only once a poll saw the handshake dropped every
// packet sent meanwhile, hundreds under a full TCP window (issue #4: gVisor
// TCP then crawled for tens of seconds at one segment per RTO). Moving it
// as our response leaves is too early the other way: our own packets then
// go to the new peer, which may not send before the member's first packet
// confirms the session, so they pile up in WireGuard's 128-packet staging
// queue for a round trip and the excess is dropped.
//
// So the address moves exactly between the two: the response our WireGuard
// is about to send is recognised as an answer to the pending key by its
// mac1 (WireGuard keys it with the receiver's public key), and its sender
// index is remembered (arm); the first packet from that member addressed
// to that index is the first on the new session, and the Bind holds it
// until the address has moved (fire). Until then we keep sending on the
// old session, which the member still decrypts. Polling for the handshake
// (promotePending) stays as the fallback.

// promoteTimeout bounds how long a switched member's pending key waits for
// a handshake before it is promoted anyway (the member may have been idle).
const promoteTimeout = 3 * time.Second

// switchWait bounds how long a handshake response or the first packet of
// a new session waits for promoteLoop; it goes on after that (the polled
// promotion then applies).
const switchWait = 100 * time.Millisecond

// WireGuard message layout used here (wireguard-go device/messages.go).
const (
	wgResponseType      = 2
	wgTransportType     = 4  // transport data
	messageResponseSize = 92 // type, sender, receiver, ephemeral, empty, mac1, mac2
	transportHeaderSize = 16 // type, receiver, counter
)

// switchReq asks promoteLoop to arm (a handshake response about to be sent
// to member) or to fire (the first packet of the armed session arrived).
type switchReq struct {
	member string
	resp   []byte // arm: the response; nil: fire
	done   chan struct{}
}

// armedSessions are the new sessions whose first packet moves a member's
// address (member → our index in that session). Its lock is never held
// while calling WireGuard or taking d.mu: the Bind reads it on WireGuard's
// receive goroutine.
type armedSessions struct {
	n   atomic.Int32 // len(idx), read without the lock on every packet
	mu  sync.Mutex
	idx map[string]uint32
}

func (a *armedSessions) set(member string, index uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.idx == nil {
		a.idx = map[string]uint32{}
	}
	a.idx[member] = index
	a.n.Store(int32(len(a.idx)))
}

func (a *armedSessions) clear(member string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.idx, member)
	a.n.Store(int32(len(a.idx)))
}

// match reports whether a packet from member to our index is the first of
// an armed session.
func (a *armedSessions) match(member string, index uint32) bool {
	if a.n.Load() == 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	i, ok := a.idx[member]
	return ok && i == index
}

// sendingResponse is called by the Bind, on a WireGuard goroutine, with
// every handshake response before it is sent.
func (d *Device) sendingResponse(member string, pkt []byte) {
	if len(pkt) != messageResponseSize {
		return
	}
	d.switchReq(switchReq{member: member, resp: append([]byte(nil), pkt...)})
}

// receivingData is called by the Bind, on WireGuard's receive goroutine,
// with every transport-data packet before WireGuard sees it: the first
// packet of an armed session fires its promotion.
func (d *Device) receivingData(member string, pkt []byte) {
	if len(pkt) < transportHeaderSize || !d.armed.match(member, binary.LittleEndian.Uint32(pkt[4:8])) {
		return
	}
	d.switchReq(switchReq{member: member})
}

// switchReq hands r to promoteLoop and waits until it is done, at most
// switchWait.
func (d *Device) switchReq(r switchReq) {
	r.done = make(chan struct{})
	t := time.NewTimer(switchWait)
	defer t.Stop()
	select {
	case d.switchCh <- r:
	case <-t.C:
		d.switchMissed.Add(1)
		return
	case <-d.ctx.Done():
		return
	}
	select {
	case <-r.done:
	case <-t.C:
		d.switchMissed.Add(1)
	case <-d.ctx.Done():
	}
}

// isResponseTo reports whether msg is a handshake response to the holder
// of key: its mac1 is keyed by the receiver's public key.
func isResponseTo(msg []byte, key Key) bool {
	if len(msg) != messageResponseSize || msg[0] != wgResponseType {
		return false
	}
	const smac1, smac2 = messageResponseSize - 32, messageResponseSize - 16
	h, _ := blake2s.New256(nil)
	h.Write([]byte("mac1----"))
	h.Write(key[:])
	var mk [blake2s.Size]byte
	h.Sum(mk[:0])
	mac, _ := blake2s.New128(mk[:])
	mac.Write(msg[:smac1])
	return subtle.ConstantTimeCompare(mac.Sum(nil), msg[smac1:smac2]) == 1
}

// handleSwitch arms or fires (see switchReq).
func (d *Device) handleSwitch(r switchReq) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.peers[r.member]
	if r.resp != nil {
		if p != nil && p.pending != nil && isResponseTo(r.resp, p.pending.PublicKey) {
			d.armed.set(r.member, binary.LittleEndian.Uint32(r.resp[4:8]))
		}
		return
	}
	d.armed.clear(r.member)
	if p == nil || p.pending == nil {
		return
	}
	var ipc strings.Builder
	d.promoteLocked(&ipc, r.member, p, "first_packet")
	// Our packets to the member route to the new peer as soon as the
	// address moves, but it can send only once it has processed the held
	// packet (and removing the old peer takes a while first: wireguard-go
	// drains its queues), so they wait in netstack (pause.go).
	d.tun.pause([]Key{p.active.PublicKey}, time.Now(), switchWait)
	if err := d.wg.IpcSet(ipc.String()); err != nil {
		d.log.Error("switch WireGuard peer key failed", "err", err)
		d.tun.endPause()
	}
	d.switchesOnFirstPacket.Add(1)
	d.notifyLocked()
}

// retireAfter is how long the old key's WireGuard peer stays after its
// address moved to the new key (without allowed IPs or keepalive): packets
// already queued to it still go out on the old session, which the member
// still decrypts; removing the peer at once discarded them (wireguard-go
// drops a stopped peer's outbound queue: up to ~280 packets per switch).
const retireAfter = time.Second

// promoteLocked writes the UAPI lines that move member's overlay address
// to its pending key and quiet the old key's peer (removed after
// retireAfter, retireDue), and records it. d.mu held.
func (d *Device) promoteLocked(ipc *strings.Builder, member string, p *peerState, why string) {
	d.ipcPeer(ipc, member, p.pending, p.addr, true)
	if p.active != nil {
		fmt.Fprintf(ipc, "public_key=%s\nupdate_only=true\npersistent_keepalive_interval=0\n", p.active.PublicKey)
		d.retiring[p.active.PublicKey] = time.Now().Add(retireAfter)
		delete(d.kaDue, p.active.PublicKey)
		d.tun.replace(p.active.PublicKey, p.pending.PublicKey)
	}
	d.armed.clear(member)
	d.log.Info("WireGuard peer switched to its new key", "peer", member, "public_key", p.pending.PublicKey.String(), "promoted_on", why)
	p.active, p.pending, p.switched, p.defers = p.pending, nil, time.Time{}, false
}

// promoteLoop handles switch requests from the Bind (switchReq) and, while
// some member has switched to a key not yet promoted here or reads from
// netstack are paused (pause.go), polls WireGuard's handshakes every
// millisecond to promote (promotePending) and to end the pause.
func (d *Device) promoteLoop() error {
	var tick <-chan time.Time
	var t *time.Ticker
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		select {
		case <-d.ctx.Done():
			return nil
		case r := <-d.switchCh:
			d.handleSwitch(r)
			close(r.done)
		case <-d.promoteCh:
		case <-tick:
			hs, err := d.handshakeTimes()
			if err != nil {
				d.log.Error("read WireGuard peer state failed", "err", err)
			}
			waiting := d.promotePending(d.now(), hs)
			if !d.tun.resume(hs) && !waiting {
				t.Stop()
				t, tick = nil, nil
			}
			continue
		}
		if t == nil {
			t = time.NewTicker(time.Millisecond)
			tick = t.C
		}
	}
}

// promotePending moves overlay addresses to pending keys of members that
// switched and completed a handshake with the new key (handshakes, by key;
// see peerState), or switched promoteTimeout ago. It reports whether some
// switched member is still waiting.
func (d *Device) promotePending(now time.Time, handshakes map[Key]time.Time) (waitingLeft bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var waiting []string
	for m, p := range d.peers {
		if p.pending != nil && !p.switched.IsZero() {
			waiting = append(waiting, m)
		}
	}
	if len(waiting) == 0 {
		return false
	}
	hs := make(map[Key]bool, len(handshakes))
	for k := range handshakes {
		hs[k] = true
	}
	var ipc strings.Builder
	for _, m := range waiting {
		p := d.peers[m]
		if !hs[p.pending.PublicKey] && now.Sub(p.switched) < promoteTimeout {
			waitingLeft = true
			continue
		}
		why := "timeout"
		if hs[p.pending.PublicKey] {
			why = "handshake"
		}
		d.promoteLocked(&ipc, m, p, why)
	}
	if ipc.Len() > 0 {
		if err := d.wg.IpcSet(ipc.String()); err != nil {
			d.log.Error("switch WireGuard peer key failed", "err", err)
		}
		d.notifyLocked()
	}
	return waitingLeft
}

// retireDue removes the WireGuard peers of old keys whose retireAfter
// passed (see promoteLocked).
func (d *Device) retireDue(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ipc strings.Builder
	for k, due := range d.retiring {
		if now.Before(due) {
			continue
		}
		delete(d.retiring, k)
		ipcRemove(&ipc, k)
	}
	if ipc.Len() > 0 {
		if err := d.wg.IpcSet(ipc.String()); err != nil {
			d.log.Error("remove old WireGuard peer failed", "err", err)
		}
	}
}

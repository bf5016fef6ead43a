package tunnel

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/memberd/memberd/tunnel/internal/core"
)

// Promotion moves a member's overlay address from its old WireGuard peer to
// the peer of the key it switched to (see core.Core).
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
// (core.Handshakes, polled by promoteLoop) stays as the fallback.

// switchWait bounds how long a handshake response or the first packet of
// a new session waits for promoteLoop; it goes on after that (the polled
// promotion then applies).
const switchWait = core.SwitchWait

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
// address (member → our index in that session). The Bind holds it and
// reads it on WireGuard's receive goroutine; the driver arms and clears.
// Its lock is never held while calling WireGuard or taking another lock.
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
	if r.resp != nil {
		d.peers.mu.Lock()
		pending, ok := d.peers.core.Pending(r.member)
		d.peers.mu.Unlock()
		if ok && isResponseTo(r.resp, Key(pending)) {
			d.io.bind.armed.set(r.member, binary.LittleEndian.Uint32(r.resp[4:8]))
		}
		return
	}
	d.io.bind.armed.clear(r.member)
	d.step(core.FirstPacket{Member: r.member})
}

// promoteLoop handles switch requests from the Bind (switchReq) and, while
// some member has switched to a key not yet promoted here or reads from
// netstack are paused (pause.go), polls WireGuard's handshakes every
// millisecond to promote (core.Handshakes) and to end the pause.
func (d *Device) promoteLoop(ctx context.Context) error {
	var tick <-chan time.Time
	var t *time.Ticker
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-d.ev.switches:
			d.handleSwitch(r)
			close(r.done)
		case <-d.ev.promote:
		case <-tick:
			hs, err := d.handshakeTimes()
			if err != nil {
				d.log.Error("read WireGuard peer state failed", "err", err)
			}
			keys := make(map[core.Key]bool, len(hs))
			for k := range hs {
				keys[core.Key(k)] = true
			}
			out, _ := d.step(core.Handshakes{Keys: keys})
			waiting := out.Waiting
			if !d.io.tun.resume(hs) && !waiting {
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

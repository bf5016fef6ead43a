package core

import (
	"bytes"
	"sort"
	"time"
)

// RotateStart begins a rotation to Next: it is announced (not active) to
// every configured peer.
type RotateStart struct{ Next Own }

// RotateTick advances a rotation: the driver steps it on every ack and
// periodically (it resends, gives up waiting, and switches). Once
// Output.Switched is set the driver announces the new key as active.
type RotateTick struct{}

// RotateEnd ends the rotation (switched, failed or abandoned).
type RotateEnd struct{}

// SwitchFailed: the driver could not apply the switch; the old key stays.
type SwitchFailed struct{}

func (RotateStart) isEvent()  {}
func (RotateTick) isEvent()   {}
func (RotateEnd) isEvent()    {}
func (SwitchFailed) isEvent() {}

type rotPhase uint8

const (
	phaseAcks     rotPhase = iota // announcing the next key, waiting for acks
	phaseTurn                     // waiting for peers that switch first
	phaseSwitched                 // switched; the driver announces it
)

// rotation is an own key rotation in progress.
type rotation struct {
	next     Own
	old      Own
	acks     map[string]bool
	phase    rotPhase
	deadline time.Time // of the current phase
	lastSend time.Time
}

func (c *Core) rotateStart(out *Output, e RotateStart, now time.Time) error {
	if c.rot != nil {
		return ErrRotating
	}
	c.rot = &rotation{next: e.Next, acks: map[string]bool{}, deadline: now.Add(c.cfg.RotationAckTimeout)}
	c.rotateTick(out, now)
	return nil
}

// unacked lists peers that have not acknowledged the next key yet.
func (c *Core) unacked() []string {
	var out []string
	for _, m := range c.sortedPeers() {
		if c.peers[m].active != nil && !c.rot.acks[m] {
			out = append(out, m)
		}
	}
	return out
}

func (c *Core) rotateTick(out *Output, now time.Time) {
	r := c.rot
	if r == nil {
		return
	}
	if r.phase == phaseAcks {
		waiting := c.unacked()
		switch {
		case len(waiting) == 0:
		case !now.Before(r.deadline):
			out.AckMissing = waiting
		default:
			if r.lastSend.IsZero() || now.Sub(r.lastSend) >= resendEvery {
				r.lastSend = now
				for _, m := range waiting {
					out.send(m, KindAnnounce, c.deferFlag(m), r.next.Raw)
				}
			}
			return
		}
		// Wait for our turn: a peer with a smaller id that is mid-rotation
		// switches first (bounded, in case it never does).
		r.phase, r.deadline = phaseTurn, now.Add(c.cfg.RotationAckTimeout+2*PromoteTimeout)
	}
	if r.phase == phaseTurn {
		if m := c.rotatingBefore(); m != "" {
			if now.Before(r.deadline) {
				return
			}
			out.TurnTimeout = m
		}
		c.switchKey(out)
	}
}

// switchKey switches the private key, then toggles persistent keepalive on
// every peer: the keepalive it sends at once starts the handshake with the
// new key. Outgoing packets wait meanwhile for the peers that can answer
// that handshake.
func (c *Core) switchKey(out *Output) {
	r := c.rot
	priv := r.next.Private
	out.Private = &priv
	if c.cfg.Keepalive > 0 {
		for _, m := range c.sortedPeers() {
			p := c.peers[m]
			if p.ready() {
				out.Pause = append(out.Pause, p.active.Key)
			}
		}
		out.PauseMax = SwitchPauseMax
		for _, m := range c.sortedPeers() {
			p := c.peers[m]
			if p.active != nil {
				out.Config = append(out.Config,
					PeerOp{Op: OpKeepalive, Key: p.active.Key},
					PeerOp{Op: OpKeepalive, Key: p.active.Key, Keepalive: c.keepalive()})
				delete(c.kaDue, p.active.Key)
			}
		}
	}
	out.Switched = &Switch{Old: c.self.Public, New: r.next.Public}
	r.old, c.self, r.phase = c.self, r.next, phaseSwitched
}

func (c *Core) switchFailed() {
	if r := c.rot; r != nil && r.phase == phaseSwitched && bytes.Equal(c.self.Public[:], r.next.Public[:]) {
		c.self = r.old
	}
	c.rot = nil
}

// rotatingBefore names a peer that announced a next key not yet promoted
// here and switches first, or "". Two members that switch at once each
// start a handshake to the other's old key, which fails, and the tunnel
// between them is cut until the fallback promotion (PromoteTimeout). So
// the smaller member id switches first: a larger one waits for it, and
// says so (FlagDefer on its ack and next-key announcement); a smaller one
// waits only for a larger one that did not say so, which has switched or
// is about to (its handshake then promotes its key here).
func (c *Core) rotatingBefore() string {
	for _, m := range c.sortedPeers() {
		if p := c.peers[m]; p.pending != nil && (m < c.cfg.Member || !p.defers) {
			return m
		}
	}
	return ""
}

// deferFlag is FlagDefer if this member is rotating, has not switched yet,
// and will wait for member's switch (member is smaller and announced a
// next key), else 0.
func (c *Core) deferFlag(member string) uint8 {
	p := c.peers[member]
	if member < c.cfg.Member && p != nil && p.pending != nil && c.rot != nil && c.rot.phase != phaseSwitched {
		return FlagDefer
	}
	return 0
}

func sortedKeys(m map[Key]time.Time) []Key {
	out := make([]Key, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i][:], out[j][:]) < 0 })
	return out
}

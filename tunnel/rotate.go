package tunnel

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// rotateLoop rotates the WireGuard key every RotateEvery, ±10% so that
// members started together do not keep rotating at the same moment.
func (d *Device) rotateLoop() error {
	t := time.NewTimer(jitter(d.cfg.RotateEvery))
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return nil
		case <-t.C:
			t.Reset(jitter(d.cfg.RotateEvery))
			if err := d.Rotate(d.ctx); err != nil && d.ctx.Err() == nil {
				d.log.Error("WireGuard key rotation failed; keeping the current key", "err", err)
			}
		}
	}
}

// Rotate replaces the WireGuard key now (see peerState for how connections
// survive): it announces the next key, waits until every configured peer
// acknowledged it or RotationAckTimeout passed, switches, and announces the
// new key as active. Concurrent calls are serialized by the caller (the
// rotation loop); calling Rotate while a rotation runs returns an error.
func (d *Device) Rotate(ctx context.Context) error {
	// idMu is held until the key is installed as d.next, so that an
	// identity change (SetIdentity) either signed it already or re-signs it.
	d.idMu.Lock()
	ks, err := d.newKeyLocked()
	if err != nil {
		d.idMu.Unlock()
		return err
	}
	d.mu.Lock()
	if d.next != nil {
		d.mu.Unlock()
		d.idMu.Unlock()
		return fmt.Errorf("a WireGuard key rotation is already in progress")
	}
	d.next = ks
	d.acks = map[string]bool{}
	d.mu.Unlock()
	d.idMu.Unlock()
	defer func() {
		d.mu.Lock()
		d.next, d.acks = nil, nil
		d.mu.Unlock()
	}()

	deadline := time.NewTimer(d.cfg.RotationAckTimeout)
	defer deadline.Stop()
	resend := time.NewTicker(time.Second)
	defer resend.Stop()
	for {
		waiting := d.unacked()
		if len(waiting) == 0 {
			break
		}
		d.mu.Lock()
		raw := ks.raw // SetIdentity may re-sign ks (under mu)
		flags := make([]uint8, len(waiting))
		for i, m := range waiting {
			flags[i] = d.deferFlagLocked(m)
		}
		d.mu.Unlock()
		for i, m := range waiting {
			d.sendControl(m, kindAnnounce, flags[i], raw)
		}
		timedOut := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.ctx.Done():
			return ErrClosed
		case <-deadline.C:
			timedOut = true
		case <-d.ackCh:
		case <-resend.C:
		}
		if timedOut {
			d.log.Warn("switching WireGuard key without acknowledgement from some peers; they reconnect at the next announcement", "peers", d.unacked())
			break
		}
	}

	// Wait for our turn: a peer with a smaller id that is mid-rotation
	// switches first (bounded, in case it never does).
	turn := time.NewTimer(d.cfg.RotationAckTimeout + 2*promoteTimeout)
	defer turn.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for m := d.rotatingBefore(); m != ""; m = d.rotatingBefore() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.ctx.Done():
			return ErrClosed
		case <-turn.C:
			d.log.Warn("switching WireGuard key while a peer's own rotation is unfinished", "peer", m)
		case <-poll.C:
			continue
		}
		break
	}

	d.mu.Lock()
	// Switch the key, then toggle persistent keepalive on every peer: the
	// keepalive it sends at once starts the handshake with the new key.
	// Outgoing packets wait meanwhile (pause.go) for the peers that can
	// answer that handshake.
	ipc := "private_key=" + ks.priv.String() + "\n"
	var answer []Key
	for _, p := range d.peers {
		if p.ready() {
			answer = append(answer, p.active.PublicKey)
		}
	}
	if d.cfg.Keepalive > 0 {
		d.tun.pause(answer, time.Now(), switchPauseMax) // WireGuard's clock
		ka := max(1, int(d.cfg.Keepalive/time.Second))
		for _, p := range d.peers {
			if p.active != nil {
				ipc += fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=0\npublic_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", p.active.PublicKey, p.active.PublicKey, ka)
				delete(d.kaDue, p.active.PublicKey)
			}
		}
	}
	if err := d.wg.IpcSet(ipc); err != nil {
		d.mu.Unlock()
		d.tun.endPause()
		return fmt.Errorf("switch WireGuard private key: %w", err)
	}
	old := d.self.att.PublicKey
	d.self = *ks
	d.mu.Unlock()
	select { // promoteLoop ends the pause
	case d.promoteCh <- struct{}{}:
	default:
	}
	d.rotations.Add(1)
	d.log.Info("WireGuard key rotated", "old_public_key", old.String(), "public_key", ks.priv.PublicKey().String())
	// The active announcement makes peers route to the new key; repeat it a
	// few times so one lost packet does not leave a peer waiting for the
	// next periodic announcement.
	for _, wait := range []time.Duration{0, 500 * time.Millisecond, 2 * time.Second} {
		select {
		case <-time.After(wait):
		case <-d.ctx.Done():
			return nil
		}
		d.announceAll(false)
	}
	return nil
}

// rotatingBefore names a peer that announced a next key not yet promoted
// here and switches first, or "". Two members that switch at once each
// start a handshake to the other's old key, which fails, and the tunnel
// between them is cut until the fallback promotion (promoteTimeout). So
// the smaller member id switches first: a larger one waits for it, and
// says so (flagDefer on its ack and next-key announcement); a smaller one
// waits only for a larger one that did not say so, which has switched or
// is about to (its handshake then promotes its key here).
func (d *Device) rotatingBefore() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	for m, p := range d.peers {
		if p.pending != nil && (m < d.cfg.Member || !p.defers) {
			return m
		}
	}
	return ""
}

// deferFlagLocked is flagDefer if this member is rotating, has not
// switched yet, and will wait for member's switch (member is smaller and
// announced a next key), else 0. d.mu held.
func (d *Device) deferFlagLocked(member string) uint8 {
	p := d.peers[member]
	if member < d.cfg.Member && p != nil && p.pending != nil && d.next != nil && d.next.att.PublicKey != d.self.att.PublicKey {
		return flagDefer
	}
	return 0
}

// unacked lists peers that have not acknowledged the next key yet.
func (d *Device) unacked() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for m, p := range d.peers {
		if p.active != nil && !d.acks[m] {
			out = append(out, m)
		}
	}
	return out
}

// jitter returns d ±10%.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

package tunnel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/memberd/memberd/tunnel/internal/core"
)

// rotateLoop rotates the WireGuard key every RotateEvery, ±10% so that
// members started together do not keep rotating at the same moment.
func (d *Device) rotateLoop(ctx context.Context) error {
	t := time.NewTimer(jitter(d.cfg.RotateEvery))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			t.Reset(jitter(d.cfg.RotateEvery))
			if err := d.Rotate(ctx); err != nil && ctx.Err() == nil {
				d.log.Error("WireGuard key rotation failed; keeping the current key", "err", err)
			}
		}
	}
}

// Rotate replaces the WireGuard key now (see core.Core for how connections
// survive): it announces the next key, waits until every configured peer
// acknowledged it or RotationAckTimeout passed, and for peers with a smaller
// id that switch first, switches, and announces the new key as active. The
// core decides each step; this loop wakes it on acks and every 50 ms.
// Concurrent calls are serialized by the caller (the rotation loop);
// calling Rotate while a rotation runs returns an error.
func (d *Device) Rotate(ctx context.Context) error {
	if !d.run.wg.Load() {
		return ErrNotRunning
	}
	// id.mu is held until the core has the key as its next one, so that an
	// identity change (SetIdentity) either signed it already or re-signs it.
	d.id.mu.Lock()
	ks, err := d.newKeyLocked()
	if err != nil {
		d.id.mu.Unlock()
		return err
	}
	out, err := d.step(core.RotateStart{Next: ks.own()})
	d.id.mu.Unlock()
	if errors.Is(err, core.ErrRotating) {
		return err
	}
	defer d.step(core.RotateEnd{})
	d.send(out.Send)
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for out.Switched == nil {
		if err != nil {
			return fmt.Errorf("switch WireGuard private key: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.run.done:
			return ErrClosed
		case <-d.ev.ack:
		case <-poll.C:
		}
		out, err = d.do(core.RotateTick{})
	}
	d.stats.rotations.Add(1)
	d.log.Info("WireGuard key rotated", "old_public_key", Key(out.Switched.Old).String(), "public_key", Key(out.Switched.New).String())
	// The active announcement makes peers route to the new key; repeat it a
	// few times so one lost packet does not leave a peer waiting for the
	// next periodic announcement.
	for _, wait := range []time.Duration{0, 500 * time.Millisecond, 2 * time.Second} {
		select {
		case <-time.After(wait):
		case <-d.run.done:
			return nil
		}
		d.announceAll(false)
	}
	return nil
}

// jitter returns d ±10%.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

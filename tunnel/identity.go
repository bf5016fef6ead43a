package tunnel

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/memberd/memberd/tunnel/internal/core"
)

// ErrIdentity: SetIdentity was given a key and chain that do not fit
// together, or that the current policy does not accept for this member.
var ErrIdentity = errors.New("member identity not usable for WireGuard key attestations")

// identity is the member identity that signs attestations. Guarded by
// Device.idMu, which is held across signing so that every key made or
// re-signed after SetIdentity returns carries the new identity (lock order:
// idMu before mu).
type identity struct {
	signer crypto.Signer
	chain  []*x509.Certificate // leaf first
}

// SetIdentity switches the member identity that signs WireGuard key
// attestations (after an HSM identity rotation) without a restart: the
// active key, and the next key of a rotation in progress, are re-signed
// with it at once and re-announced to every member, and later keys are
// signed with it. The WireGuard keys themselves do not change, so sessions
// and connections inside the tunnel are untouched.
//
// chain is leaf first; its leaf must hold signer's public key and the
// current policy must accept it for this member, otherwise the old identity
// stays in use and an error wrapping ErrIdentity says why. Calling it with
// the identity already in use (same leaf certificate) does nothing, so it
// can be called on every policy change to retry a refused identity.
func (d *Device) SetIdentity(signer crypto.Signer, chain []*x509.Certificate) error {
	if signer == nil || len(chain) == 0 || len(chain) > maxChainCerts {
		return fmt.Errorf("%w: want a signer and 1..%d certificates (leaf first)", ErrIdentity, maxChainCerts)
	}
	if !publicKeysEqual(signer.Public(), chain[0].PublicKey) {
		return fmt.Errorf("%w: leaf certificate %q does not hold the identity key", ErrIdentity, chain[0].Subject)
	}
	d.id.mu.Lock()
	defer d.id.mu.Unlock()
	if bytes.Equal(d.id.cur.chain[0].Raw, chain[0].Raw) {
		return nil
	}
	auth := d.auth.Load().auth
	d.peers.mu.Lock()
	selfPriv := Key(d.peers.core.Self().Private)
	nextOwn, rotating := d.peers.core.Next()
	d.peers.mu.Unlock()
	if err := auth.VerifyMemberCert(d.cfg.Member, chain); err != nil {
		return fmt.Errorf("%w: the current policy does not accept certificate %q (serial %s) for member %s: %v; keeping the previous identity",
			ErrIdentity, chain[0].Subject, chain[0].SerialNumber, d.cfg.Member, err)
	}
	old := d.id.cur
	d.id.cur = identity{signer: signer, chain: append([]*x509.Certificate(nil), chain...)}
	self, err := d.signLocked(selfPriv)
	var next *keyState
	if err == nil && rotating {
		next, err = d.signLocked(Key(nextOwn.Private))
	}
	if err != nil {
		d.id.cur = old
		return fmt.Errorf("%w: re-sign the WireGuard key: %w", ErrIdentity, err)
	}
	ev := core.Resigned{Self: self.own()}
	if next != nil {
		o := next.own()
		ev.Next = &o
	}
	// The core takes each re-signed key still in use and announces them:
	// the active key to every member, the next key (not active) too.
	out, _ := d.step(ev)
	d.stats.identityChanges.Add(1)
	d.log.Info("WireGuard key attestations re-signed with the new member identity",
		"old_certificate_serial", old.chain[0].SerialNumber.String(), "certificate_serial", chain[0].SerialNumber.String(),
		"certificate_not_after", chain[0].NotAfter)
	d.send(out.Send)
	return nil
}

// signLocked makes the attestation of priv's public key with the current
// identity. d.id.mu held.
func (d *Device) signLocked(priv Key) (*keyState, error) {
	now := d.now()
	// Back-date not_before a little so peers with a slightly slow clock
	// accept it.
	att, err := SignAttestation(d.id.cur.signer, d.id.cur.chain, d.cfg.Member, priv.PublicKey(), now.Add(-5*time.Minute), now.Add(d.cfg.AttestationTTL))
	if err != nil {
		return nil, err
	}
	return &keyState{priv: priv, att: att, raw: att.Marshal()}, nil
}

// Identity returns the leaf certificate that signs this member's
// attestations now.
func (d *Device) Identity() *x509.Certificate {
	d.id.mu.Lock()
	defer d.id.mu.Unlock()
	return d.id.cur.chain[0]
}

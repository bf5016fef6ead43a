package core

import (
	"fmt"
	"net/netip"
	"time"
)

// Received: an announcement from member From, verified by the driver
// (signature, member of the policy, not expired, From == Att.Member).
type Received struct {
	From  string
	Flags uint8
	Att   *Att
}

// AckReceived: member From acknowledged Key (our next key, if rotating).
type AckReceived struct {
	From  string
	Flags uint8
	Key   Key
}

// Announce sends the active attestation to every other member (only those
// whose peer is not ready, with OnlyMissing); Request asks each for its own.
type Announce struct{ Request, OnlyMissing bool }

// Tick switches on due keepalives and removes retired old keys' peers.
type Tick struct{}

// Expire removes peers whose attestation ran out and stale pending keys.
type Expire struct{}

// Policy is a new policy: Members with their overlay addresses (this
// member included); Accepts reports whether the policy still accepts the
// identity that signed an attestation.
type Policy struct {
	Members map[string]netip.Addr
	Accepts func(*Att) bool
}

// ConfigFailed: the driver could not apply the configuration of Member's
// peer; the core forgets it and removes what it may have configured.
type ConfigFailed struct{ Member string }

// Resigned: the own keys were re-signed with a new identity (SetIdentity).
// A key is updated only if its private key is still the one in use.
type Resigned struct {
	Self Own
	Next *Own
}

func (Received) isEvent()     {}
func (AckReceived) isEvent()  {}
func (Announce) isEvent()     {}
func (Tick) isEvent()         {}
func (Expire) isEvent()       {}
func (Policy) isEvent()       {}
func (ConfigFailed) isEvent() {}
func (Resigned) isEvent()     {}

// acceptable checks an attestation against the keys already in use.
func (c *Core) acceptable(att *Att) error {
	if att.Member == c.cfg.Member {
		return fmt.Errorf("%w: attestation names this appliance's own member %s", ErrRefused, att.Member)
	}
	if _, ok := c.members[att.Member]; !ok {
		return fmt.Errorf("%w: %s", ErrNotMember, att.Member)
	}
	if att.Key == c.self.Public || (c.rot != nil && att.Key == c.rot.next.Public) {
		return fmt.Errorf("%w: %s announced this appliance's own WireGuard key", ErrRefused, att.Member)
	}
	for _, m := range c.sortedPeers() {
		p := c.peers[m]
		if m == att.Member {
			continue
		}
		if (p.active != nil && p.active.Key == att.Key) || (p.pending != nil && p.pending.Key == att.Key) {
			return fmt.Errorf("%w: %s announced a WireGuard key already used by %s", ErrRefused, att.Member, m)
		}
	}
	return nil
}

// received configures the peer of an announcement and answers it.
func (c *Core) received(out *Output, e Received, now time.Time) error {
	att := e.Att
	if err := c.acceptable(att); err != nil {
		return err
	}
	p := c.peers[e.From]
	if p == nil {
		p = &peer{addr: c.members[e.From]}
		c.peers[e.From] = p
		if k, ok := c.gone[e.From]; ok && k != att.Key {
			out.Replaced = append(out.Replaced, e.From)
			out.Rekeyed = append(out.Rekeyed, e.From)
		}
		delete(c.gone, e.From)
	}
	wasReady, wasActive := p.ready(), p.active != nil
	active := e.Flags&FlagActive != 0
	keyChanged := false
	switch {
	case p.active != nil && p.active.Key == att.Key:
		c.refresh(out, p, att)
	case active && p.pending != nil && p.pending.Key == att.Key && p.active != nil:
		// The member switched to its announced key: promote once the
		// pending peer has a handshake (Handshakes, FirstPacket).
		if p.switched.IsZero() {
			p.switched, out.Poll = now, true
		}
	case active || p.active == nil:
		keyChanged = true
		c.replaceActive(out, e.From, p, att, now)
		if wasActive {
			out.Rekeyed = append(out.Rekeyed, e.From)
			if e.Flags&FlagHaveYours == 0 {
				out.Replaced = append(out.Replaced, e.From)
			}
		}
	default:
		c.setPending(out, e.From, p, att, e.Flags)
	}
	if active {
		p.knowsUs = e.Flags&FlagHaveYours != 0
	}
	configured := len(out.Config) > 0
	c.kick(out, e.From, p, wasReady, keyChanged)
	if configured && (keyChanged || p.pending == att) {
		out.Accepted = append(out.Accepted, Accepted{Member: e.From, Att: att, Active: p.active == att})
	}
	if p.ready() != wasReady || keyChanged {
		out.Changed = true
	}
	c.answer(out, e, now)
	return nil
}

// answer acks a next-key announcement and answers a request for our
// attestation (rate limited per member).
func (c *Core) answer(out *Output, e Received, now time.Time) {
	if e.Flags&FlagActive == 0 {
		out.send(e.From, KindAck, c.deferFlag(e.From), e.Att.Key[:])
	}
	if e.Flags&FlagRequest != 0 {
		if c.requests.allow(e.From, now) {
			out.send(e.From, KindAnnounce, c.announceFlags(e.From, false), c.self.Raw)
		} else {
			out.Unanswered = append(out.Unanswered, e.From)
		}
	}
}

// refresh takes a refreshed attestation of the active key: a later expiry,
// or the member re-signed it with a rotated identity, which must replace
// the old one before the old certificate is revoked.
func (c *Core) refresh(out *Output, p *peer, att *Att) {
	newSigner := att.Signer != p.active.Signer
	if att.Expiry.After(p.active.Expiry) || (!att.NotBefore.Before(p.active.NotBefore) && newSigner) {
		if newSigner {
			out.ReAttested = append(out.ReAttested, Accepted{Member: att.Member, Att: att, Active: true})
		}
		p.active = att
	}
}

// replaceActive configures att as member's active key (a new member, a
// restart, or a switch whose next-key announcement was missed).
func (c *Core) replaceActive(out *Output, member string, p *peer, att *Att, now time.Time) {
	// The new peer starts without persistent keepalive (which would start
	// a handshake at once): see kick.
	out.Config = append(out.Config, PeerOp{Op: OpSet, Key: att.Key, Member: member, Addr: p.addr})
	if c.cfg.Keepalive > 0 {
		c.kaDue[att.Key] = now.Add(KeepaliveDelay)
	}
	if p.active != nil {
		out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.active.Key})
		delete(c.kaDue, p.active.Key)
	}
	if p.pending != nil && p.pending.Key != att.Key {
		out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.pending.Key})
	}
	p.active, p.pending, p.switched, p.defers = att, nil, time.Time{}, false
}

// setPending configures att as member's announced next key.
func (c *Core) setPending(out *Output, member string, p *peer, att *Att, flags uint8) {
	if p.pending != nil && p.pending.Key != att.Key {
		out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.pending.Key})
	}
	if p.pending == nil || p.pending.Key != att.Key {
		out.Config = append(out.Config, PeerOp{Op: OpSet, Key: att.Key, Member: member})
		p.switched = time.Time{}
	}
	p.pending, p.defers = att, flags&FlagDefer != 0
}

// kick starts the handshake with a new peer. A handshake initiation toward
// a member that does not have our key yet is dropped and retried only after
// 5 s, and if both sides initiate at once the initiations cross and both
// fail until that retry. So only the member with the smaller id initiates,
// and only once both sides hold each other's key (ready); the other side
// switches keepalive on after KeepaliveDelay (Tick).
func (c *Core) kick(out *Output, member string, p *peer, wasReady, keyChanged bool) {
	if p.ready() && (!wasReady || keyChanged) && c.cfg.Member < member && c.cfg.Keepalive > 0 {
		delete(c.kaDue, p.active.Key)
		out.Config = append(out.Config, PeerOp{Op: OpKeepalive, Key: p.active.Key, Keepalive: c.keepalive()})
	}
}

// announceFlags are the flags of an active announcement to member:
// have-yours when we hold its key, request when we lack its key or do not
// know that it holds ours (or when forced).
func (c *Core) announceFlags(member string, request bool) uint8 {
	f := uint8(FlagActive)
	p := c.peers[member]
	if p != nil && p.active != nil {
		f |= FlagHaveYours
	}
	if request || !p.ready() {
		f |= FlagRequest
	}
	return f
}

func (c *Core) ackReceived(e AckReceived) {
	if c.rot != nil && e.Key == c.rot.next.Public {
		c.rot.acks[e.From] = true
		if p := c.peers[e.From]; p != nil && p.pending != nil {
			p.defers = e.Flags&FlagDefer != 0
		}
	}
}

func (c *Core) announce(out *Output, e Announce) {
	for _, m := range c.others() {
		if p := c.peers[m]; e.OnlyMissing && p.ready() {
			continue
		}
		out.send(m, KindAnnounce, c.announceFlags(m, e.Request), c.self.Raw)
	}
}

func (c *Core) tick(out *Output, now time.Time) {
	for _, m := range c.sortedPeers() {
		p := c.peers[m]
		if p.active == nil {
			continue
		}
		if due, ok := c.kaDue[p.active.Key]; ok && !now.Before(due) {
			out.Config = append(out.Config, PeerOp{Op: OpKeepalive, Key: p.active.Key, Keepalive: c.keepalive()})
		}
	}
	for k, due := range c.kaDue {
		if !now.Before(due) {
			delete(c.kaDue, k)
		}
	}
	for _, k := range sortedKeys(c.retiring) {
		if !now.Before(c.retiring[k]) {
			delete(c.retiring, k)
			out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: k})
		}
	}
}

func (c *Core) expire(out *Output, now time.Time) {
	for _, m := range c.sortedPeers() {
		p := c.peers[m]
		n := len(out.Config)
		if p.pending != nil && !now.Before(p.pending.Expiry) {
			out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.pending.Key})
			p.pending = nil
		}
		if p.active != nil && !now.Before(p.active.Expiry) {
			delete(c.kaDue, p.active.Key)
			c.gone[m] = p.active.Key
			out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.active.Key})
			out.Expired = append(out.Expired, m)
			p.active = nil
		}
		if len(out.Config) > n {
			if p.active == nil && p.pending == nil {
				delete(c.peers, m)
			}
			out.Changed = true
		}
	}
}

// removeOps removes p's WireGuard peers.
func removeOps(out *Output, p *peer) {
	if p.active != nil {
		out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.active.Key})
	}
	if p.pending != nil {
		out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.pending.Key})
	}
}

// policy applies a new policy: peers of members no longer in it (or whose
// identity it no longer accepts) are removed, changed overlay addresses
// re-routed; the driver then announces to every member.
func (c *Core) policy(out *Output, e Policy) {
	c.members = e.Members
	c.requests.forget(func(m string) bool { _, ok := e.Members[m]; return ok })
	for m := range c.gone {
		if _, ok := e.Members[m]; !ok {
			delete(c.gone, m)
		}
	}
	for _, m := range c.sortedPeers() {
		p := c.peers[m]
		addr, ok := e.Members[m]
		if !ok || !addr.IsValid() || (p.active != nil && !e.Accepts(p.active)) {
			removeOps(out, p)
			delete(c.peers, m)
			out.Removed = append(out.Removed, m)
			continue
		}
		if p.pending != nil && !e.Accepts(p.pending) {
			out.Config = append(out.Config, PeerOp{Op: OpRemove, Key: p.pending.Key})
			p.pending = nil
		}
		if addr != p.addr && p.active != nil {
			out.Config = append(out.Config, PeerOp{Op: OpSet, Key: p.active.Key, Member: m, Addr: addr, Keepalive: c.keepaliveOrOff()})
		}
		p.addr = addr
	}
	out.Changed = true
}

// keepaliveOrOff is the keepalive of a peer configured with it on.
func (c *Core) keepaliveOrOff() int {
	if c.cfg.Keepalive > 0 {
		return c.keepalive()
	}
	return 0
}

func (c *Core) configFailed(out *Output, e ConfigFailed) {
	if p := c.peers[e.Member]; p != nil {
		if p.active != nil {
			c.gone[e.Member] = p.active.Key
		}
		delete(c.peers, e.Member)
		removeOps(out, p)
		out.Changed = true
	}
}

func (c *Core) resigned(out *Output, e Resigned) {
	if c.self.Private == e.Self.Private {
		c.self.Raw = e.Self.Raw
	}
	c.announce(out, Announce{})
	if e.Next != nil && c.rot != nil && c.rot.next.Private == e.Next.Private {
		c.rot.next.Raw = e.Next.Raw
		for _, m := range c.others() {
			out.send(m, KindAnnounce, 0, e.Next.Raw)
		}
	}
}

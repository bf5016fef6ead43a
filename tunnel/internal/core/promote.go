package core

import "time"

// FirstPacket: the first packet of the new session the driver armed for
// Member arrived (its handshake response answered the pending key). The
// member's address moves to the pending key before WireGuard sees it.
type FirstPacket struct{ Member string }

// Handshakes: the keys whose WireGuard peer completed a handshake, polled
// while some switched member waits for promotion.
type Handshakes struct{ Keys map[Key]bool }

func (FirstPacket) isEvent() {}
func (Handshakes) isEvent()  {}

// promote moves member's overlay address to its pending key and quiets the
// old key's peer (removed RetireAfter later, Tick).
func (c *Core) promote(out *Output, member string, p *peer, why string, now time.Time) {
	out.Config = append(out.Config, PeerOp{Op: OpSet, Key: p.pending.Key, Member: member, Addr: p.addr, Keepalive: c.keepaliveOrOff()})
	pr := Promotion{Member: member, New: p.pending.Key, Why: why}
	if p.active != nil {
		pr.Old = p.active.Key
		out.Config = append(out.Config, PeerOp{Op: OpKeepalive, Key: p.active.Key})
		c.retiring[p.active.Key] = now.Add(RetireAfter)
		delete(c.kaDue, p.active.Key)
	}
	out.Promoted = append(out.Promoted, pr)
	p.active, p.pending, p.switched, p.defers = p.pending, nil, time.Time{}, false
	out.Changed = true
}

func (c *Core) firstPacket(out *Output, e FirstPacket, now time.Time) {
	p := c.peers[e.Member]
	if p == nil || p.pending == nil {
		return
	}
	c.promote(out, e.Member, p, "first_packet", now)
	// Our packets to the member route to the new peer as soon as the
	// address moves, but it can send only once it has processed the held
	// packet, so they wait (bounded).
	out.Pause, out.PauseMax = []Key{p.active.Key}, SwitchWait
}

// handshakes promotes the pending keys of members that switched and
// completed a handshake with the new key, or switched PromoteTimeout ago.
func (c *Core) handshakes(out *Output, e Handshakes, now time.Time) {
	for _, m := range c.sortedPeers() {
		p := c.peers[m]
		if p.pending == nil || p.switched.IsZero() {
			continue
		}
		hs := e.Keys[p.pending.Key]
		if !hs && now.Sub(p.switched) < PromoteTimeout {
			out.Waiting = true
			continue
		}
		why := "timeout"
		if hs {
			why = "handshake"
		}
		c.promote(out, m, p, why, now)
	}
}

package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// peerState is what this device knows about one other member.
//
// Key rotation without dropping connections: WireGuard keys a peer by public
// key and routes an overlay address to exactly one peer. When member A
// rotates, it first announces its NEXT key (not active). Every peer B adds it
// as a second, "pending" WireGuard peer with no allowed IPs and acknowledges.
// Once all peers acknowledged (or a timeout passed), A switches its private
// key and announces the key as active. A's first packet triggers a handshake
// with the new key, which B answers from the pending peer; when B sees the
// active announcement it moves A's overlay address to that peer and removes
// the old one, in one IpcSet. Meanwhile packets under the old sessions still
// decrypt on both sides, and the few that fall in the gap are retransmitted
// by TCP, so connections inside the tunnel (netstack) survive.
type peerState struct {
	addr    netip.Addr
	active  *Attestation // the peer configured with the overlay address
	pending *Attestation // announced next key, configured without allowed IPs
}

// onControl runs on the receive path: copy and queue, never block.
func (d *Device) onControl(sender string, pkt []byte) {
	select {
	case d.ctlCh <- ctlPacket{sender: sender, pkt: append([]byte(nil), pkt...)}:
	default:
		d.ctlDropped.Add(1)
	}
}

func (d *Device) controlLoop() error {
	var ra reassembler
	for {
		select {
		case <-d.ctx.Done():
			return nil
		case cp := <-d.ctlCh:
			h, msg, ok, err := ra.add(cp.sender, cp.pkt, d.now())
			if err != nil {
				d.ctlDropped.Add(1)
				d.log.Debug("dropped control packet", "from", cp.sender, "err", err)
				continue
			}
			if !ok {
				continue
			}
			switch h.kind {
			case kindAnnounce:
				d.handleAnnounce(cp.sender, h.flags, msg)
			case kindAck:
				d.handleAck(cp.sender, msg)
			default: // unknown kinds are skipped (newer peers)
			}
		}
	}
}

// sendControl fragments and sends one control message.
func (d *Device) sendControl(to string, kind controlKind, flags uint8, payload []byte) {
	pkts, err := encodeControl(kind, flags, d.msgID.Add(1), payload, d.tr.MaxPacketSize())
	if err != nil {
		d.log.Warn("cannot encode control message", "to", to, "err", err)
		return
	}
	for _, p := range pkts {
		if err := d.tr.WritePacket(p, to); err != nil {
			d.log.Debug("control send failed", "to", to, "err", err)
			return
		}
	}
}

// announceAll sends the active attestation to every other member; request
// asks each one for its own (always at start; later only where missing).
func (d *Device) announceAll(request bool) {
	d.mu.Lock()
	raw := d.self.raw
	var targets []string
	var flags []uint8
	for id := range d.auth.byID {
		if id == d.cfg.Member {
			continue
		}
		f := uint8(flagActive)
		if p := d.peers[id]; request || p == nil || p.active == nil {
			f |= flagRequest
		}
		targets = append(targets, id)
		flags = append(flags, f)
	}
	d.mu.Unlock()
	for i, to := range targets {
		d.sendControl(to, kindAnnounce, flags[i], raw)
	}
}

// handleAnnounce verifies an attestation from sender and configures the peer.
func (d *Device) handleAnnounce(sender string, flags uint8, msg []byte) {
	now := d.now()
	att, err := ParseAttestation(msg)
	if err == nil && att.Member != sender {
		err = fmt.Errorf("%w: %s sent an attestation for %s", ErrAttestationSender, sender, att.Member)
	}
	d.mu.Lock()
	if err == nil {
		err = d.acceptable(att, now)
	}
	if err != nil {
		d.mu.Unlock()
		d.attRefused.Add(1)
		d.log.Warn("refused WireGuard key attestation", "from", sender, "refused_reason", reasonOf(err), "err", err)
		return
	}
	p := d.peers[sender]
	if p == nil {
		p = &peerState{addr: d.auth.byID[sender]}
		d.peers[sender] = p
	}
	var ipc strings.Builder
	switch {
	case p.active != nil && p.active.PublicKey == att.PublicKey:
		if att.Expiry().After(p.active.Expiry()) {
			p.active = att // refreshed attestation of the same key
		}
	case flags&flagActive != 0 || p.active == nil:
		d.ipcPeer(&ipc, sender, att, p.addr, true)
		if p.active != nil {
			ipcRemove(&ipc, p.active.PublicKey)
		}
		if p.pending != nil && p.pending.PublicKey != att.PublicKey {
			ipcRemove(&ipc, p.pending.PublicKey)
		}
		p.active, p.pending = att, nil
	default:
		if p.pending != nil && p.pending.PublicKey != att.PublicKey {
			ipcRemove(&ipc, p.pending.PublicKey)
		}
		if p.pending == nil || p.pending.PublicKey != att.PublicKey {
			d.ipcPeer(&ipc, sender, att, netip.Addr{}, false)
		}
		p.pending = att
	}
	if ipc.Len() > 0 {
		if err := d.wg.IpcSet(ipc.String()); err != nil {
			d.log.Error("configure WireGuard peer failed", "peer", sender, "err", err)
			delete(d.peers, sender)
			d.removePeersLocked(p)
		} else {
			d.attAccepted.Add(1)
			d.log.Info("WireGuard peer configured", "peer", sender, "public_key", att.PublicKey.String(), "active", p.active == att, "expiry", att.Expiry())
		}
		d.notifyLocked()
	}
	ownRaw := d.self.raw
	d.mu.Unlock()
	if flags&flagActive == 0 {
		d.sendControl(sender, kindAck, 0, att.PublicKey[:])
	}
	if flags&flagRequest != 0 {
		d.sendControl(sender, kindAnnounce, flagActive, ownRaw)
	}
}

// acceptable checks an attestation against the current Authority and the
// keys already in use. d.mu held.
func (d *Device) acceptable(att *Attestation, now time.Time) error {
	if att.Member == d.cfg.Member {
		return fmt.Errorf("%w: attestation names this appliance's own member %s", ErrAttestationSender, att.Member)
	}
	if _, ok := d.auth.byID[att.Member]; !ok {
		return fmt.Errorf("%w: %s", ErrNotMember, att.Member)
	}
	if err := att.Verify(d.auth.auth, now); err != nil {
		return err
	}
	if att.PublicKey == d.self.att.PublicKey || (d.next != nil && att.PublicKey == d.next.att.PublicKey) {
		return fmt.Errorf("%w: %s announced this appliance's own WireGuard key", ErrAttestationSender, att.Member)
	}
	for m, p := range d.peers {
		if m == att.Member {
			continue
		}
		if (p.active != nil && p.active.PublicKey == att.PublicKey) || (p.pending != nil && p.pending.PublicKey == att.PublicKey) {
			return fmt.Errorf("%w: %s announced a WireGuard key already used by %s", ErrAttestationSender, att.Member, m)
		}
	}
	return nil
}

func reasonOf(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{ErrBadAttestation, "malformed"}, {ErrAttestationSignature, "signature"},
		{ErrAttestationExpired, "expired"}, {ErrAttestationIdentity, "identity"},
		{ErrAttestationSender, "sender"}, {ErrNotMember, "not_member"},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

func (d *Device) handleAck(sender string, msg []byte) {
	if len(msg) != 32 {
		d.ctlDropped.Add(1)
		return
	}
	d.mu.Lock()
	if d.next != nil && Key(msg) == d.next.att.PublicKey {
		d.acks[sender] = true
	}
	d.mu.Unlock()
	select {
	case d.ackCh <- struct{}{}:
	default:
	}
}

// ipcPeer writes the UAPI lines that add or update one peer. An invalid
// addr means no allowed IPs (a pending key). d.mu held.
func (d *Device) ipcPeer(b *strings.Builder, member string, att *Attestation, addr netip.Addr, keepalive bool) {
	fmt.Fprintf(b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", att.PublicKey, member)
	if addr.IsValid() {
		fmt.Fprintf(b, "allowed_ip=%s\n", netip.PrefixFrom(addr, addr.BitLen()))
	}
	ka := 0
	if keepalive && d.cfg.Keepalive > 0 {
		ka = max(1, int(d.cfg.Keepalive/time.Second))
	}
	b.WriteString("persistent_keepalive_interval=" + strconv.Itoa(ka) + "\n")
}

func ipcRemove(b *strings.Builder, k Key) {
	fmt.Fprintf(b, "public_key=%s\nremove=true\n", k)
}

// removePeersLocked removes p's WireGuard peers. d.mu held.
func (d *Device) removePeersLocked(p *peerState) {
	var ipc strings.Builder
	if p.active != nil {
		ipcRemove(&ipc, p.active.PublicKey)
	}
	if p.pending != nil {
		ipcRemove(&ipc, p.pending.PublicKey)
	}
	if ipc.Len() > 0 {
		if err := d.wg.IpcSet(ipc.String()); err != nil {
			d.log.Error("remove WireGuard peer failed", "err", err)
		}
	}
}

func (d *Device) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// expire removes peers whose attestation ran out and forgets stale pending keys.
func (d *Device) expire() {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for m, p := range d.peers {
		var ipc strings.Builder
		if p.pending != nil && !now.Before(p.pending.Expiry()) {
			ipcRemove(&ipc, p.pending.PublicKey)
			p.pending = nil
		}
		if p.active != nil && !now.Before(p.active.Expiry()) {
			d.log.Warn("WireGuard peer attestation expired; peer removed until a fresh one arrives", "peer", m, "expiry", p.active.Expiry())
			ipcRemove(&ipc, p.active.PublicKey)
			p.active = nil
		}
		if ipc.Len() > 0 {
			if err := d.wg.IpcSet(ipc.String()); err != nil {
				d.log.Error("remove expired WireGuard peer failed", "peer", m, "err", err)
			}
			if p.active == nil && p.pending == nil {
				delete(d.peers, m)
			}
			d.notifyLocked()
		}
	}
}

// SetAuthority applies a new policy snapshot at once: peers of members no
// longer in it (or whose identity it no longer accepts) are removed and
// their connections inside the tunnel closed; changed overlay addresses are
// re-routed; new members are asked for their attestation. A change of this
// appliance's own overlay address needs a restart (logged).
func (d *Device) SetAuthority(a Authority) {
	mi := newMemberIndex(a)
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	if addr := mi.byID[d.cfg.Member]; addr != d.addr {
		d.log.Error("this member's overlay address changed or was removed in the policy; restart memberd to apply", "old", d.addr, "new", addr)
	}
	d.auth = mi
	var ipc strings.Builder
	var cut []string
	for m, p := range d.peers {
		addr, ok := mi.byID[m]
		valid := ok && addr.IsValid()
		if valid && p.active != nil {
			if err := a.VerifyMemberCert(m, p.active.Chain); err != nil {
				d.log.Warn("policy no longer accepts peer identity", "peer", m, "err", err)
				valid = false
			}
		}
		if !valid {
			if p.active != nil {
				ipcRemove(&ipc, p.active.PublicKey)
			}
			if p.pending != nil {
				ipcRemove(&ipc, p.pending.PublicKey)
			}
			delete(d.peers, m)
			cut = append(cut, m)
			continue
		}
		if p.pending != nil && a.VerifyMemberCert(m, p.pending.Chain) != nil {
			ipcRemove(&ipc, p.pending.PublicKey)
			p.pending = nil
		}
		if addr != p.addr && p.active != nil {
			d.ipcPeer(&ipc, m, p.active, addr, true)
		}
		p.addr = addr
	}
	if ipc.Len() > 0 {
		if err := d.wg.IpcSet(ipc.String()); err != nil {
			d.log.Error("apply policy to WireGuard peers failed", "err", err)
		}
	}
	var conns []*Conn
	for _, m := range cut {
		for c := range d.conns[m] {
			conns = append(conns, c)
		}
		d.log.Info("member removed from the tunnel", "peer", m)
	}
	d.notifyLocked()
	d.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	d.announceAll(false)
}

// waitPeer blocks until member has an active peer, or ctx ends.
func (d *Device) waitPeer(ctx context.Context, member string) (netip.Addr, error) {
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return netip.Addr{}, ErrClosed
		}
		addr, ok := d.auth.byID[member]
		if !ok || !addr.IsValid() {
			d.mu.Unlock()
			return netip.Addr{}, fmt.Errorf("%w: %s", ErrNotMember, member)
		}
		if p := d.peers[member]; p != nil && p.active != nil {
			d.mu.Unlock()
			return addr, nil
		}
		ch := d.changed
		d.mu.Unlock()
		select {
		case <-ch:
		case <-d.ctx.Done():
			return netip.Addr{}, ErrClosed
		case <-ctx.Done():
			return netip.Addr{}, fmt.Errorf("%w: %s: %w", ErrNoPeer, member, ctx.Err())
		}
	}
}

func sortPeers(p []PeerStatus) {
	sort.Slice(p, func(i, j int) bool { return p[i].Member < p[j].Member })
}

func isClosedErr(err error) bool { return errors.Is(err, net.ErrClosed) }

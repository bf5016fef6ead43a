package tunnel

import (
	"bytes"
	"context"
	"encoding/hex"
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
// Key rotation without dropping connections. WireGuard keys a peer by
// public key and routes an overlay address to exactly one peer; a handshake
// initiation to a key the other side no longer (or not yet) holds is lost
// until a 5 s retry, and two initiations that cross both fail. So member A
// rotates in steps that never need such a handshake:
//
//  1. A announces its NEXT key (not active). Every peer B adds it as a
//     second, "pending" WireGuard peer with no allowed IPs and acks.
//  2. Once all peers acked (or RotationAckTimeout passed), and no peer is
//     mid-rotation ahead of A (the smaller id goes first, so two switches
//     never overlap; see rotatingBefore), A pauses its outgoing packets
//     (pause.go), switches its private key, announces the key as active
//     and sends a keepalive to every peer, which starts a handshake with
//     the new key.
//  3. B answers that handshake from the pending peer. B keeps routing to A's
//     old peer meanwhile (its session still decrypts at A), so B never
//     initiates toward the old key. When the first packet of the new
//     session arrives, B moves A's overlay address to the pending peer, in
//     one IpcSet, before WireGuard sees that packet (promote.go); the old
//     peer is removed a second later, once its queue went out. A completed
//     handshake seen by polling, or promoteTimeout after the active
//     announcement, is the fallback.
//
// So no packet A sends on its new session is dropped; the few others lost
// in the switch are retransmitted by TCP, and connections inside the
// tunnel (on netstack) survive.
type peerState struct {
	addr    netip.Addr
	active  *Attestation // the peer configured with the overlay address
	pending *Attestation // announced next key, configured without allowed IPs
	// defers: its last ack or next-key announcement said it switches to
	// pending only after we switched (flagDefer).
	defers  bool
	knowsUs bool // its last active announcement said it holds our key
	// switched is when the member announced its pending key as active
	// (zero until then); the pending peer is promoted after a handshake.
	switched time.Time
}

// ready: both sides hold each other's key, so a handshake can succeed.
func (p *peerState) ready() bool { return p != nil && p.active != nil && p.knowsUs }

// onControl runs on the receive path: copy and queue, never block.
func (d *Device) onControl(sender string, pkt []byte) {
	select {
	case d.ctlCh <- ctlPacket{sender: sender, pkt: append([]byte(nil), pkt...)}:
	default:
		d.dropControl(dropQueueFull)
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
				d.dropControl(dropMalformed)
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
				d.handleAck(cp.sender, h.flags, msg)
			default: // unknown kinds are skipped (newer peers)
			}
		}
	}
}

// sendControl fragments and sends one control message.
//
// It reports whether the transport took every packet (false, e.g., while no
// relay is connected).
func (d *Device) sendControl(to string, kind controlKind, flags uint8, payload []byte) bool {
	pkts, err := encodeControl(kind, flags, d.msgID.Add(1), payload, d.tr.MaxPacketSize())
	if err != nil {
		d.log.Warn("cannot encode control message", "to", to, "err", err)
		return false
	}
	for _, p := range pkts {
		if err := d.tr.WritePacket(p, to); err != nil {
			d.log.Debug("control send failed", "to", to, "err", err)
			return false
		}
	}
	return true
}

// announceAll sends the active attestation to every other member; request
// asks each one for its own (always at start; later only where missing).
func (d *Device) announceAll(request bool) { d.announce(request, false) }

// announceMissing sends the active attestation to every other member whose
// peer is not ready (unknown, or not known to hold our key) and returns how
// many there were and to how many the transport took it.
func (d *Device) announceMissing() (missing, sent int) { return d.announce(false, true) }

// announce sends the active attestation to the other members (only those
// whose peer is not ready, with onlyMissing) and returns how many it tried
// and how many the transport took.
func (d *Device) announce(request, onlyMissing bool) (tried, sent int) {
	d.mu.Lock()
	raw := d.self.raw
	var targets []string
	var flags []uint8
	for id := range d.auth.byID {
		if id == d.cfg.Member {
			continue
		}
		if p := d.peers[id]; onlyMissing && p != nil && p.ready() {
			continue
		}
		targets = append(targets, id)
		flags = append(flags, d.announceFlagsLocked(id, request))
	}
	d.mu.Unlock()
	for i, to := range targets {
		if d.sendControl(to, kindAnnounce, flags[i], raw) {
			sent++
		}
	}
	return len(targets), sent
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
		d.refuseAttestation(reasonOf(err))
		d.log.Warn("refused WireGuard key attestation", "from", sender, "refused_reason", reasonOf(err), "err", err)
		return
	}
	p := d.peers[sender]
	if p == nil {
		p = &peerState{addr: d.auth.byID[sender]}
		d.peers[sender] = p
	}
	wasReady := p.ready()
	var ipc strings.Builder
	keyChanged := false
	switch {
	case p.active != nil && p.active.PublicKey == att.PublicKey:
		// A refreshed attestation of the same key: a later expiry, or the
		// member re-signed it with a rotated identity (SetIdentity), which
		// must replace the old one before the old certificate is revoked.
		if att.Expiry().After(p.active.Expiry()) || (!att.NotBefore.Before(p.active.NotBefore) && !bytes.Equal(att.Chain[0].Raw, p.active.Chain[0].Raw)) {
			if !bytes.Equal(att.Chain[0].Raw, p.active.Chain[0].Raw) {
				d.attAccepted.Add(1)
				d.log.Info("WireGuard peer re-attested its key with a new identity certificate", "peer", sender, "certificate_serial", att.Chain[0].SerialNumber.String())
			}
			p.active = att
		}
	case flags&flagActive != 0 && p.pending != nil && p.pending.PublicKey == att.PublicKey && p.active != nil:
		// The member switched to its announced key: promote once the
		// pending peer has a handshake (promotePending).
		if p.switched.IsZero() {
			p.switched = now
			select {
			case d.promoteCh <- struct{}{}:
			default:
			}
		}
	case flags&flagActive != 0 || p.active == nil:
		keyChanged = true
		// The new peer starts without persistent keepalive (which would
		// start a handshake at once): see the kick below.
		d.ipcPeer(&ipc, sender, att, p.addr, false)
		if d.cfg.Keepalive > 0 {
			d.kaDue[att.PublicKey] = now.Add(keepaliveDelay)
		}
		if p.active != nil {
			ipcRemove(&ipc, p.active.PublicKey)
			delete(d.kaDue, p.active.PublicKey)
		}
		if p.pending != nil && p.pending.PublicKey != att.PublicKey {
			ipcRemove(&ipc, p.pending.PublicKey)
		}
		p.active, p.pending, p.switched, p.defers = att, nil, time.Time{}, false
	default:
		if p.pending != nil && p.pending.PublicKey != att.PublicKey {
			ipcRemove(&ipc, p.pending.PublicKey)
		}
		if p.pending == nil || p.pending.PublicKey != att.PublicKey {
			d.ipcPeer(&ipc, sender, att, netip.Addr{}, false)
			p.switched = time.Time{}
		}
		p.pending, p.defers = att, flags&flagDefer != 0
	}
	if flags&flagActive != 0 {
		p.knowsUs = flags&flagHaveYours != 0
	}
	// Handshake kick for a new peer. A handshake initiation toward a member
	// that does not have our key yet is dropped and retried only after 5 s,
	// and if both sides initiate at once the initiations cross and both
	// fail until that retry. So only the member with the smaller id
	// initiates, and only once both sides hold each other's key (ready);
	// the other side switches keepalive on after keepaliveDelay.
	if p.ready() && (!wasReady || keyChanged) && d.cfg.Member < sender && d.cfg.Keepalive > 0 {
		delete(d.kaDue, p.active.PublicKey)
		fmt.Fprintf(&ipc, "public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", p.active.PublicKey, max(1, int(d.cfg.Keepalive/time.Second)))
	}
	if ipc.Len() > 0 {
		if err := d.wg.IpcSet(ipc.String()); err != nil {
			d.log.Error("configure WireGuard peer failed", "peer", sender, "err", err)
			delete(d.peers, sender)
			d.removePeersLocked(p)
		} else if keyChanged || p.pending == att {
			d.attAccepted.Add(1)
			d.log.Info("WireGuard peer configured", "peer", sender, "public_key", att.PublicKey.String(), "active", p.active == att, "expiry", att.Expiry())
		}
	}
	if p.ready() != wasReady || keyChanged {
		d.notifyLocked()
	}
	replyFlags := d.announceFlagsLocked(sender, false)
	ackFlags := d.deferFlagLocked(sender)
	ownRaw := d.self.raw
	answer := flags&flagRequest != 0 && d.requests.allow(sender, now)
	d.mu.Unlock()
	if flags&flagActive == 0 {
		d.sendControl(sender, kindAck, ackFlags, att.PublicKey[:])
	}
	if answer {
		d.sendControl(sender, kindAnnounce, replyFlags, ownRaw)
	} else if flags&flagRequest != 0 {
		d.dropControl(dropRequestLimited)
		d.log.Debug("attestation request not answered: rate limited", "from", sender, "request_interval", d.cfg.RequestInterval)
	}
}

// announceFlagsLocked are the flags of an active announcement to member:
// have-yours when we hold its key, request when we lack its key or do not
// know that it holds ours (or when forced). d.mu held.
func (d *Device) announceFlagsLocked(member string, request bool) uint8 {
	f := uint8(flagActive)
	p := d.peers[member]
	if p != nil && p.active != nil {
		f |= flagHaveYours
	}
	if request || p == nil || !p.ready() {
		f |= flagRequest
	}
	return f
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

func (d *Device) handleAck(sender string, flags uint8, msg []byte) {
	if len(msg) != 32 {
		d.dropControl(dropBadAck)
		return
	}
	d.mu.Lock()
	if d.next != nil && Key(msg) == d.next.att.PublicKey {
		d.acks[sender] = true
		if p := d.peers[sender]; p != nil && p.pending != nil {
			p.defers = flags&flagDefer != 0
		}
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

// keepaliveDelay is how long a peer configured without an immediate
// handshake waits before its persistent keepalive is switched on.
const keepaliveDelay = 2 * time.Second

// enableDueKeepalives switches on persistent keepalive for peers whose
// delay ran out (see handleAnnounce).
func (d *Device) enableDueKeepalives(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ipc strings.Builder
	ka := max(1, int(d.cfg.Keepalive/time.Second))
	for k, due := range d.kaDue {
		if now.Before(due) {
			continue
		}
		delete(d.kaDue, k)
		for _, p := range d.peers {
			if p.active != nil && p.active.PublicKey == k {
				fmt.Fprintf(&ipc, "public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", k, ka)
			}
		}
	}
	if ipc.Len() > 0 {
		if err := d.wg.IpcSet(ipc.String()); err != nil {
			d.log.Error("enable WireGuard keepalive failed", "err", err)
		}
	}
}

// handshakes reports which peers (by public key) completed a handshake.
func (d *Device) handshakes() (map[Key]bool, error) {
	t, err := d.handshakeTimes()
	out := make(map[Key]bool, len(t))
	for k := range t {
		out[k] = true
	}
	return out, err
}

// handshakeTimes gives the last completed handshake of every peer (by
// public key) that has one.
func (d *Device) handshakeTimes() (map[Key]time.Time, error) {
	dump, err := d.wg.IpcGet()
	if err != nil {
		return map[Key]time.Time{}, err
	}
	return parseHandshakeTimes(dump), nil
}

// parseHandshakeTimes reads last_handshake_time_sec/nsec per public_key
// from a WireGuard UAPI dump; peers without a handshake (0, 0) are absent.
func parseHandshakeTimes(dump string) map[Key]time.Time {
	out := map[Key]time.Time{}
	var cur Key
	var sec, nsec int64
	flush := func() {
		if !cur.IsZero() && (sec != 0 || nsec != 0) {
			out[cur] = time.Unix(sec, nsec)
		}
	}
	for _, line := range strings.Split(dump, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			cur, sec, nsec = Key{}, 0, 0
			if b, err := hex.DecodeString(v); err == nil && len(b) == 32 {
				cur = Key(b)
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	flush()
	return out
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
			delete(d.kaDue, p.active.PublicKey)
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
	d.requests.forget(func(m string) bool { _, ok := mi.byID[m]; return ok })
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
	d.syncMemberAddrs(a.Members(), false)
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
		if p := d.peers[member]; p.ready() {
			key := p.active.PublicKey
			d.mu.Unlock()
			d.waitHandshake(ctx, key)
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

// handshakeWait bounds how long Dial waits for the first handshake with a
// freshly configured peer.
const handshakeWait = 2 * time.Second

// waitHandshake waits (bounded) until the peer with key has completed a
// handshake. The member with the smaller id starts that handshake as soon
// as both sides hold each other's keys; if the other side's first packet
// (a Dial's SYN) started one at the same moment, the two initiations would
// cross and both fail until WireGuard's 5 s retry.
func (d *Device) waitHandshake(ctx context.Context, key Key) {
	deadline := time.Now().Add(handshakeWait)
	for time.Now().Before(deadline) {
		hs, _ := d.handshakes()
		if hs[key] {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-d.ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func sortPeers(p []PeerStatus) {
	sort.Slice(p, func(i, j int) bool { return p[i].Member < p[j].Member })
}

func isClosedErr(err error) bool { return errors.Is(err, net.ErrClosed) }

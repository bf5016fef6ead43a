package tunnel

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/memberd/memberd/tunnel/internal/core"
)

// The peer state and the key-rotation protocol live in the pure core
// (internal/core, where the protocol is described on core.Core). This file
// is the driver's side: it verifies attestations, steps the core under
// peers.mu, applies its WireGuard configuration in one IpcSet, and sends
// its control messages once the lock is released.

// errApply wraps a WireGuard configuration the core asked for and
// WireGuard refused.
var errApply = errors.New("apply WireGuard configuration")

// queueControl is the Bind's control function: copy and queue for
// controlLoop, never block (the Bind runs on the receive path).
func queueControl(ch chan<- ctlPacket, st *counters) func(sender string, pkt []byte) {
	return func(sender string, pkt []byte) {
		select {
		case ch <- ctlPacket{sender: sender, pkt: append([]byte(nil), pkt...)}:
		default:
			st.dropControl(dropQueueFull)
		}
	}
}

func (d *Device) controlLoop(ctx context.Context) error {
	var ra reassembler
	for {
		select {
		case <-ctx.Done():
			return nil
		case cp := <-d.ev.ctl:
			h, msg, ok, err := ra.add(cp.sender, cp.pkt, d.now())
			if err != nil {
				d.stats.dropControl(dropMalformed)
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
	if !d.run.wg.Load() {
		return false // before Run: its start-up announces
	}
	pkts, err := encodeControl(kind, flags, d.ev.msgID.Add(1), payload, d.io.tr.MaxPacketSize())
	if err != nil {
		d.log.Warn("cannot encode control message", "to", to, "err", err)
		return false
	}
	for _, p := range pkts {
		if err := d.io.tr.WritePacket(p, to); err != nil {
			d.log.Debug("control send failed", "to", to, "err", err)
			return false
		}
	}
	return true
}

// send sends the core's messages and returns how many the transport took.
func (d *Device) send(msgs []core.Message) (sent int) {
	for _, m := range msgs {
		if d.sendControl(m.To, controlKind(m.Kind), m.Flags, m.Payload) {
			sent++
		}
	}
	return sent
}

// step runs ev through the core at d.now() and applies its output to
// WireGuard (under peers.mu), then logs and counts it; the caller sends
// out.Send (do). An error wraps core.ErrRefused, core.ErrRotating, or
// errApply when WireGuard refused the configuration.
func (d *Device) step(ev core.Event) (core.Output, error) {
	d.peers.mu.Lock()
	now := d.now()
	out, err := d.peers.core.Step(ev, now)
	if err == nil {
		if aerr := d.applyLocked(out); aerr != nil {
			err = fmt.Errorf("%w: %w", errApply, aerr)
			d.undoLocked(ev, &out, aerr, now)
		}
	}
	if out.Changed {
		close(d.peers.changed)
		d.peers.changed = make(chan struct{})
	}
	d.peers.mu.Unlock()
	d.report(out)
	return out, err
}

// do is step, then sends the core's messages.
func (d *Device) do(ev core.Event) (core.Output, error) {
	out, err := d.step(ev)
	d.send(out.Send)
	return out, err
}

// applyLocked applies out's pause and WireGuard configuration. peers.mu held.
// Before Run has made the WireGuard device, configuration is refused
// (ErrNotRunning): the core has no peers then (they come from Run's
// control loop) and Run sets the core's key.
func (d *Device) applyLocked(out core.Output) error {
	if !d.run.wg.Load() {
		if ipc := uapi(out); ipc != "" || len(out.Pause) > 0 || len(out.Promoted) > 0 {
			return ErrNotRunning
		}
		return nil
	}
	for _, p := range out.Promoted {
		d.io.bind.armed.clear(p.Member)
		if p.Old != (core.Key{}) {
			d.io.tun.replace(Key(p.Old), Key(p.New))
		}
	}
	if len(out.Pause) > 0 {
		keys := make([]Key, len(out.Pause))
		for i, k := range out.Pause {
			keys[i] = Key(k)
		}
		d.io.tun.pause(keys, time.Now(), out.PauseMax) // WireGuard's clock
	}
	ipc := uapi(out)
	if ipc == "" {
		return nil
	}
	if err := d.io.wg.IpcSet(ipc); err != nil {
		if len(out.Pause) > 0 {
			d.io.tun.endPause()
		}
		return err
	}
	return nil
}

// undoLocked tells the core that WireGuard refused what ev configured: a
// peer is forgotten (it is configured again by its next announcement), a
// key switch is abandoned. peers.mu held.
func (d *Device) undoLocked(ev core.Event, out *core.Output, err error, now time.Time) {
	switch e := ev.(type) {
	case core.Received:
		d.log.Error("configure WireGuard peer failed", "peer", e.From, "err", err)
		out.Accepted = nil
		undo, _ := d.peers.core.Step(core.ConfigFailed{Member: e.From}, now)
		if err := d.applyLocked(undo); err != nil {
			d.log.Error("remove WireGuard peer failed", "peer", e.From, "err", err)
		}
		out.Changed = true
	case core.RotateStart, core.RotateTick:
		if out.Switched != nil {
			d.peers.core.Step(core.SwitchFailed{}, now)
			out.Switched = nil
		}
	default:
		d.log.Error("configure WireGuard peers failed", "err", err)
	}
}

// report logs and counts what a step did.
func (d *Device) report(out core.Output) {
	for _, a := range out.Accepted {
		d.stats.attAccepted.Add(1)
		att := attOf(a.Att)
		d.log.Info("WireGuard peer configured", "peer", a.Member, "public_key", att.PublicKey.String(), "active", a.Active, "expiry", att.Expiry())
	}
	for _, a := range out.ReAttested {
		d.stats.attAccepted.Add(1)
		d.log.Info("WireGuard peer re-attested its key with a new identity certificate", "peer", a.Member, "certificate_serial", attOf(a.Att).Chain[0].SerialNumber.String())
	}
	for _, p := range out.Promoted {
		if p.Why == "first_packet" {
			d.stats.switchesOnFirstPacket.Add(1)
		}
		d.log.Info("WireGuard peer switched to its new key", "peer", p.Member, "public_key", Key(p.New).String(), "promoted_on", p.Why)
	}
	for _, m := range out.Expired {
		d.log.Warn("WireGuard peer attestation expired; peer removed until a fresh one arrives", "peer", m)
	}
	for _, m := range out.Removed {
		d.log.Info("member removed from the tunnel", "peer", m)
	}
	for _, m := range out.Replaced {
		n := d.closeMember(m)
		d.log.Info("member's tunnel endpoint restarted (a new WireGuard key, and it no longer holds ours): closed the connections to its old endpoint", "peer", m, "connections", n)
	}
	for _, m := range out.Rekeyed {
		d.notifyRekeyed(m)
	}
	for _, m := range out.Unanswered {
		d.stats.dropControl(dropRequestLimited)
		d.log.Debug("attestation request not answered: rate limited", "from", m, "request_interval", d.cfg.RequestInterval)
	}
	if len(out.AckMissing) > 0 {
		d.log.Warn("switching WireGuard key without acknowledgement from some peers; they reconnect at the next announcement", "peers", out.AckMissing)
	}
	if out.TurnTimeout != "" {
		d.log.Warn("switching WireGuard key while a peer's own rotation is unfinished", "peer", out.TurnTimeout)
	}
	if out.Poll || out.Switched != nil {
		select { // promoteLoop polls handshakes (and ends a pause)
		case d.ev.promote <- struct{}{}:
		default:
		}
	}
}

// uapi writes the UAPI lines of out's key switch and peer changes.
func uapi(out core.Output) string {
	var b strings.Builder
	if out.Private != nil {
		b.WriteString("private_key=" + Key(*out.Private).String() + "\n")
	}
	for _, op := range out.Config {
		k := Key(op.Key)
		switch op.Op {
		case core.OpSet:
			fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", k, op.Member)
			if op.Addr.IsValid() {
				fmt.Fprintf(&b, "allowed_ip=%s\n", netip.PrefixFrom(op.Addr, op.Addr.BitLen()))
			}
			b.WriteString("persistent_keepalive_interval=" + strconv.Itoa(op.Keepalive) + "\n")
		case core.OpKeepalive:
			fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", k, op.Keepalive)
		case core.OpRemove:
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k)
		}
	}
	return b.String()
}

// coreAtt is a verified attestation as the core holds it.
func coreAtt(a *Attestation) *core.Att {
	return &core.Att{
		Member: a.Member, Key: core.Key(a.PublicKey), NotBefore: a.NotBefore, Expiry: a.Expiry(),
		Signer: string(a.Chain[0].Raw), Ext: a,
	}
}

// attOf is the attestation the core holds as a's Ext (nil if none).
func attOf(a *core.Att) *Attestation {
	if a == nil {
		return nil
	}
	att, _ := a.Ext.(*Attestation)
	return att
}

// announceAll sends the active attestation to every other member; request
// asks each one for its own (always at start; later only where missing).
func (d *Device) announceAll(request bool) { d.do(core.Announce{Request: request}) }

// announceMissing sends the active attestation to every other member whose
// peer is not ready (unknown, or not known to hold our key) and returns how
// many there were and to how many the transport took it.
func (d *Device) announceMissing() (missing, sent int) {
	out, _ := d.step(core.Announce{OnlyMissing: true})
	return len(out.Send), d.send(out.Send)
}

// handleAnnounce verifies an attestation from sender and hands it to the core.
func (d *Device) handleAnnounce(sender string, flags uint8, msg []byte) {
	att, err := ParseAttestation(msg)
	if err == nil {
		err = d.verify(sender, att)
	}
	if err == nil {
		_, err = d.do(core.Received{From: sender, Flags: flags, Att: coreAtt(att)})
		switch {
		case errors.Is(err, core.ErrRefused):
			err = fmt.Errorf("%w: %w", ErrAttestationSender, err)
		case errors.Is(err, core.ErrNotMember):
			err = fmt.Errorf("%w: %s", ErrNotMember, sender) // the policy changed meanwhile
		default:
			err = nil // errApply is logged by step
		}
	}
	if err != nil {
		d.stats.refuseAttestation(reasonOf(err))
		d.log.Warn("refused WireGuard key attestation", "from", sender, "refused_reason", reasonOf(err), "err", err)
	}
}

// verify checks an attestation from sender against the current Authority;
// the core checks it against the keys in use.
func (d *Device) verify(sender string, att *Attestation) error {
	if att.Member != sender {
		return fmt.Errorf("%w: %s sent an attestation for %s", ErrAttestationSender, sender, att.Member)
	}
	if att.Member == d.cfg.Member {
		return fmt.Errorf("%w: attestation names this appliance's own member %s", ErrAttestationSender, att.Member)
	}
	auth := d.auth.Load()
	if _, ok := auth.byID[att.Member]; !ok {
		return fmt.Errorf("%w: %s", ErrNotMember, att.Member)
	}
	return att.Verify(auth.auth, d.now())
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
		d.stats.dropControl(dropBadAck)
		return
	}
	d.step(core.AckReceived{From: sender, Flags: flags, Key: core.Key(msg)})
	select {
	case d.ev.ack <- struct{}{}:
	default:
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
	if !d.run.wg.Load() {
		return map[Key]time.Time{}, nil // before Run: no peers
	}
	dump, err := d.io.wg.IpcGet()
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

// SetAuthority applies a new policy snapshot at once: peers of members no
// longer in it (or whose identity it no longer accepts) are removed and
// their connections inside the tunnel closed; changed overlay addresses are
// re-routed; new members are asked for their attestation. A change of this
// appliance's own overlay address needs a restart (logged).
func (d *Device) SetAuthority(a Authority) {
	if d.isClosed() {
		return
	}
	mi := newMemberIndex(a)
	if addr := mi.byID[d.cfg.Member]; addr != d.addr {
		d.log.Error("this member's overlay address changed or was removed in the policy; restart memberd to apply", "old", d.addr, "new", addr)
	}
	accepts := func(att *core.Att) bool {
		err := a.VerifyMemberCert(att.Member, attOf(att).Chain)
		if err != nil {
			d.log.Warn("policy no longer accepts peer identity", "peer", att.Member, "err", err)
		}
		return err == nil
	}
	// The new policy is stored under conns.mu: track, under the same lock,
	// refuses connections to members it no longer lists from then on; the
	// ones it tracked before are closed below.
	d.conns.mu.Lock()
	d.auth.Store(mi)
	d.conns.mu.Unlock()
	out, _ := d.step(core.Policy{Members: mi.byID, Accepts: accepts})
	for _, m := range out.Removed {
		d.closeMember(m)
	}
	d.syncMemberAddrs(false)
	d.announceAll(false)
}

// closeMember closes every connection to member inside the tunnel and
// returns how many there were.
func (d *Device) closeMember(member string) int {
	var conns []*Conn
	d.conns.mu.Lock()
	for c := range d.conns.byMember[member] {
		conns = append(conns, c)
	}
	d.conns.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return len(conns)
}

// OnRekeyed calls fn(member) each time member's active WireGuard key is
// replaced by one it had not announced as its next key: it restarted, or
// a rotation's next-key announcement was lost. The tunnel itself closes its
// connections to the member only where it is sure of a restart (the
// member no longer holds our key); a connection to a restarted member's old
// endpoint never fails by itself, so a user that would rather redial than
// risk keeping one closes its own connections to member in fn.
//
// fn runs on the goroutine that handled the announcement, after the
// tunnel's own closing and with no lock of the Device held: it may call the
// Device, but must not block for long. The returned stop unregisters fn;
// it is idempotent.
func (d *Device) OnRekeyed(fn func(member string)) (stop func()) {
	p := &fn
	d.conns.mu.Lock()
	d.conns.rekeyed[p] = struct{}{}
	d.conns.mu.Unlock()
	return func() {
		d.conns.mu.Lock()
		delete(d.conns.rekeyed, p)
		d.conns.mu.Unlock()
	}
}

// notifyRekeyed calls the OnRekeyed functions for member.
func (d *Device) notifyRekeyed(member string) {
	d.conns.mu.Lock()
	fns := make([]func(string), 0, len(d.conns.rekeyed))
	for p := range d.conns.rekeyed {
		fns = append(fns, *p)
	}
	d.conns.mu.Unlock()
	for _, fn := range fns {
		fn(member)
	}
}

func (d *Device) isClosed() bool {
	d.conns.mu.Lock()
	defer d.conns.mu.Unlock()
	return d.conns.closed
}

// waitPeer blocks until member has an active peer, or ctx ends.
func (d *Device) waitPeer(ctx context.Context, member string) (netip.Addr, error) {
	for {
		if d.isClosed() {
			return netip.Addr{}, ErrClosed
		}
		addr, ok := d.auth.Load().byID[member]
		if !ok || !addr.IsValid() {
			return netip.Addr{}, fmt.Errorf("%w: %s", ErrNotMember, member)
		}
		d.peers.mu.Lock()
		key, ready := d.peers.core.Ready(member)
		ch := d.peers.changed
		d.peers.mu.Unlock()
		if ready {
			d.waitHandshake(ctx, Key(key))
			return addr, nil
		}
		select {
		case <-ch:
		case <-d.run.done:
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
		case <-d.run.done:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func isClosedErr(err error) bool { return errors.Is(err, net.ErrClosed) }

package tunnel

// Member addresses: one local address per remote member, derived from its
// overlay address, on which the same ports forward into the tunnel to that
// member. A node next to the appliance then reaches every member's node at
// <member address>:<same port> (e.g. enode://<id>@127.77.0.3:30303), and
// the listeners follow the policy: a member added gets its address, a
// member removed loses it, without a restart.

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
)

// MemberAddrs configures member addresses (Config.MemberAddrs).
type MemberAddrs struct {
	// Prefix holds the local addresses: a member's is Prefix's address with
	// the bits past Prefix's length taken from the member's overlay address
	// (127.77.0.0/16 and overlay 100.64.0.3 give 127.77.0.3). On Linux all
	// of 127.0.0.0/8 is loopback and needs no setup; any other prefix needs
	// its addresses configured on the host.
	Prefix netip.Prefix
	// Ports are listened on at every member's address, each forwarding to
	// the same port on that member (subject to the policy ACL).
	Ports []uint16
}

// Validate checks the prefix and ports; errors name the fields as the
// appliance config does (tunnel.member_addresses.*).
func (m *MemberAddrs) Validate() error {
	if !m.Prefix.IsValid() {
		return fmt.Errorf("%w: member_addresses.prefix is required (e.g. 127.77.0.0/16)", ErrConfig)
	}
	if m.Prefix.Bits() == m.Prefix.Addr().BitLen() {
		return fmt.Errorf("%w: member_addresses.prefix %s leaves no bits for members: use a shorter prefix such as /16", ErrConfig, m.Prefix)
	}
	if len(m.Ports) == 0 {
		return fmt.Errorf("%w: member_addresses.ports: name at least one port", ErrConfig)
	}
	seen := map[uint16]bool{}
	for i, p := range m.Ports {
		if p == 0 || seen[p] {
			return fmt.Errorf("%w: member_addresses.ports[%d] %d must be 1..65535 and unique", ErrConfig, i, p)
		}
		seen[p] = true
	}
	return nil
}

// MemberAddr is member's local address under prefix: prefix's leading bits,
// then overlay's remaining ones. ok is false when the families differ or the
// result is prefix's own (all host bits zero) address.
func MemberAddr(prefix netip.Prefix, overlay netip.Addr) (addr netip.Addr, ok bool) {
	overlay = overlay.Unmap()
	base := prefix.Masked().Addr()
	if !prefix.IsValid() || base.BitLen() != overlay.BitLen() {
		return netip.Addr{}, false
	}
	b, o := base.AsSlice(), overlay.AsSlice()
	for i := range b {
		n := min(max(prefix.Bits()-8*i, 0), 8) // prefix bits in this byte
		keep := byte(0xff << (8 - n))
		b[i] = b[i]&keep | o[i]&^keep
	}
	addr, _ = netip.AddrFromSlice(b)
	return addr, addr != base
}

// memberAddrs is the running set of member-address listeners.
type memberAddrs struct {
	mu      sync.Mutex // held across a sync, so syncs apply in order
	running map[string]*memberListeners
}

// memberListeners are one member's listeners; cancel stops the
// connections they forwarded.
type memberListeners struct {
	addr   netip.Addr
	cancel context.CancelFunc
	lns    []net.Listener
}

// stop closes the listeners at once (so that their address can be taken
// again in the same sync) and ends their connections.
func (l *memberListeners) stop() {
	l.cancel()
	for _, ln := range l.lns {
		ln.Close()
	}
}

// MemberAddrs lists the local address of every member that has one now.
func (d *Device) MemberAddrs() map[string]netip.Addr {
	d.fwd.maddrs.mu.Lock()
	defer d.fwd.maddrs.mu.Unlock()
	out := make(map[string]netip.Addr, len(d.fwd.maddrs.running))
	for m, l := range d.fwd.maddrs.running {
		out[m] = l.addr
	}
	return out
}

// syncMemberAddrs makes the listeners match the members of the current
// policy: it stops those of members gone or readdressed and starts the
// missing ones. At start (strict) a listener that cannot be opened is an
// error; on a policy change it is logged and retried at the next one.
// Before Run it does nothing (Run's start-up syncs).
func (d *Device) syncMemberAddrs(strict bool) error {
	cfg := d.cfg.MemberAddrs
	if cfg == nil {
		return nil
	}
	ma := &d.fwd.maddrs
	ma.mu.Lock()
	defer ma.mu.Unlock()
	d.run.mu.Lock()
	ctx, eg := d.run.ctx, d.run.eg
	d.run.mu.Unlock()
	if ctx == nil {
		return nil
	}
	// Read under ma.mu: of two concurrent syncs the later applies the
	// policy stored last.
	members := d.auth.Load().auth.Members()
	want := map[string]netip.Addr{}
	owner := map[netip.Addr]string{}
	members = slices.Clone(members)
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	for _, m := range members {
		if m.ID == d.cfg.Member || !m.Addr.IsValid() {
			continue
		}
		addr, ok := MemberAddr(cfg.Prefix, m.Addr)
		if !ok {
			d.log.Warn("member gets no member address: its overlay address does not fit member_addresses.prefix", "peer", m.ID, "overlay_addr", m.Addr, "prefix", cfg.Prefix)
			continue
		}
		if other, dup := owner[addr]; dup {
			d.log.Warn("member gets no member address: another member's overlay address maps to the same one; use a prefix at least as long as the policy's overlay prefix", "peer", m.ID, "addr", addr, "taken_by", other, "prefix", cfg.Prefix)
			continue
		}
		owner[addr] = m.ID
		want[m.ID] = addr
	}

	if ma.running == nil {
		ma.running = map[string]*memberListeners{}
	}
	for m, l := range ma.running {
		if want[m] != l.addr {
			l.stop()
			delete(ma.running, m)
			d.log.Info("member address closed", "peer", m, "addr", l.addr)
		}
	}
	for _, m := range slices.Sorted(maps.Keys(want)) {
		if _, ok := ma.running[m]; ok {
			continue
		}
		l, err := d.startMemberListeners(ctx, eg, m, want[m], cfg.Ports)
		if err != nil {
			if strict {
				return err
			}
			d.log.Error("member address not opened; retried at the next policy change", "peer", m, "err", err)
			continue
		}
		if l == nil { // closed
			return nil
		}
		ma.running[m] = l
		d.log.Info("member address open", "peer", m, "addr", want[m], "ports", cfg.Ports)
	}
	return nil
}

// startMemberListeners listens on addr at every port, forwarding to member
// in Run's eg until Run's ctx ends; nil, nil if the device is closed.
func (d *Device) startMemberListeners(ctx context.Context, eg *errgroup.Group, member string, a netip.Addr, ports []uint16) (*memberListeners, error) {
	ctx, cancel := context.WithCancel(ctx)
	var lns []net.Listener
	for _, p := range ports {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", netip.AddrPortFrom(a, p).String())
		if err != nil {
			cancel()
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("member_addresses (for %s): %w: the prefix's addresses must be local (127.0.0.0/8, or configured on this host) and the port free", member, err)
		}
		lns = append(lns, ln)
	}
	d.conns.mu.Lock() // eg.Go only while open: Close waits for eg after setting closed
	defer d.conns.mu.Unlock()
	if d.conns.closed {
		cancel()
		for _, l := range lns {
			l.Close()
		}
		return nil, nil
	}
	for i, ln := range lns {
		eg.Go(func() error {
			if err := d.ServeForward(ctx, ln, member, ports[i]); err != nil && ctx.Err() == nil {
				d.log.Error("member address stopped", "peer", member, "addr", addrString(ln.Addr()), "err", err)
			}
			return nil
		})
	}
	return &memberListeners{addr: a, cancel: cancel, lns: lns}, nil
}

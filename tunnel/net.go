package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// Conn is a TCP connection inside the tunnel with a known remote member.
// It is closed by the Device when that member is removed from the policy.
type Conn struct {
	net.Conn
	member        string
	d             *Device
	once          sync.Once
	local, remote net.Addr // as when the connection was set up
}

// RemoteAddr is the peer's overlay address and port. Unlike the netstack
// connection's, it stays set after the peer reset or closed the
// connection, so no caller logging it finds nil.
func (c *Conn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}

// LocalAddr is this member's overlay address and port, kept as RemoteAddr.
func (c *Conn) LocalAddr() net.Addr {
	if c.local != nil {
		return c.local
	}
	return c.Conn.LocalAddr()
}

// Member is the member at the other end, authenticated by WireGuard
// (cryptokey routing: only that member's key may use its overlay address).
func (c *Conn) Member() string { return c.member }

// CloseWrite half-closes the connection (for forwarding).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close closes the connection; idempotent.
func (c *Conn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.Conn.Close()
		c.d.conns.mu.Lock()
		delete(c.d.conns.byMember[c.member], c)
		if len(c.d.conns.byMember[c.member]) == 0 {
			delete(c.d.conns.byMember, c.member)
		}
		c.d.conns.mu.Unlock()
	})
	return err
}

// track registers a connection, or refuses it if the device is closed or
// member was removed meanwhile.
func (d *Device) track(nc net.Conn, member string) (*Conn, error) {
	c := &Conn{Conn: nc, member: member, d: d, local: nc.LocalAddr(), remote: nc.RemoteAddr()}
	d.conns.mu.Lock()
	defer d.conns.mu.Unlock()
	if d.conns.closed {
		nc.Close()
		return nil, ErrClosed
	}
	if _, ok := d.auth.Load().byID[member]; !ok {
		nc.Close()
		return nil, fmt.Errorf("%w: %s", ErrNotMember, member)
	}
	if d.conns.byMember[member] == nil {
		d.conns.byMember[member] = map[*Conn]struct{}{}
	}
	d.conns.byMember[member][c] = struct{}{}
	return c, nil
}

// Dial opens a TCP connection to port on member through the tunnel. The
// policy ACL must allow this member to reach member:port. If the device is
// not up yet (Ready) or no attestation from member has arrived yet, Dial
// waits until ctx ends.
func (d *Device) Dial(ctx context.Context, member string, port uint16) (*Conn, error) {
	auth := d.auth.Load()
	if member == d.cfg.Member {
		return nil, fmt.Errorf("%w: %s is this appliance; connect locally", ErrDenied, member)
	}
	if _, ok := auth.byID[member]; !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotMember, member)
	}
	if !auth.auth.Allowed(d.cfg.Member, member, port) {
		d.stats.aclDenied.Add(1)
		return nil, fmt.Errorf("%w: %s may not connect to %s port %d: change the policy ACL if this is needed", ErrDenied, d.cfg.Member, member, port)
	}
	if err := d.waitUp(ctx); err != nil {
		return nil, err
	}
	addr, err := d.waitPeer(ctx, member)
	if err != nil {
		return nil, err
	}
	nc, err := d.io.tnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(addr, port))
	if err != nil {
		return nil, fmt.Errorf("dial %s port %d (%s) through the tunnel: %w", member, port, addr, err)
	}
	return d.track(nc, member)
}

// Listener accepts TCP connections on an overlay port, only from members
// the policy ACL allows to reach that port; others are closed at once.
type Listener struct {
	ln   net.Listener
	d    *Device
	port uint16
	once sync.Once
}

var _ net.Listener = (*Listener)(nil)

// Listen listens on port of this member's overlay address. The device
// must be up (Ready), else the error wraps ErrNotRunning (or ErrClosed).
func (d *Device) Listen(port uint16) (*Listener, error) {
	if !d.isUp() {
		if d.isClosed() {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("%w: listen on overlay port %d", ErrNotRunning, port)
	}
	return d.listen(port)
}

// listen is Listen once the netstack exists (Run's start-up on).
func (d *Device) listen(port uint16) (*Listener, error) {
	ln, err := d.io.tnet.ListenTCPAddrPort(netip.AddrPortFrom(d.addr, port))
	if err != nil {
		return nil, fmt.Errorf("listen on overlay %s port %d: %w", d.addr, port, err)
	}
	l := &Listener{ln: ln, d: d, port: port}
	d.conns.mu.Lock()
	defer d.conns.mu.Unlock()
	if d.conns.closed {
		ln.Close()
		return nil, ErrClosed
	}
	d.conns.listeners[l] = struct{}{}
	return l, nil
}

// Accept returns the next connection from an allowed member (as a *Conn).
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptConn()
	if err != nil {
		return nil, err // not a typed nil *Conn
	}
	return c, nil
}

// AcceptConn is Accept with the concrete type.
func (l *Listener) AcceptConn() (*Conn, error) {
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			return nil, err
		}
		// Once: a netstack connection's RemoteAddr turns nil when the
		// peer resets it, which a refused member may do on purpose.
		ra := nc.RemoteAddr()
		from := remoteMember(l.d, ra)
		if from == "" || !l.d.allowed(from, l.port) {
			l.d.stats.aclDenied.Add(1)
			l.d.log.Warn("refused tunnel connection: not allowed by the policy ACL", "from_addr", addrString(ra), "from", from, "port", l.port)
			nc.Close()
			continue
		}
		c, err := l.d.track(nc, from)
		if err != nil {
			continue
		}
		return c, nil
	}
}

func (d *Device) allowed(from string, port uint16) bool {
	auth := d.auth.Load()
	return auth.auth.Allowed(from, d.cfg.Member, port)
}

func remoteMember(d *Device, a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return ""
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return ""
	}
	return d.auth.Load().byAddr[ip.Unmap()]
}

// Close stops listening; idempotent.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		err = l.ln.Close()
		l.d.conns.mu.Lock()
		delete(l.d.conns.listeners, l)
		l.d.conns.mu.Unlock()
	})
	return err
}

// Addr is the overlay address and port.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

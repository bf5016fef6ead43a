// Package pktstream is a small reliable byte stream over an unreliable
// packet path, for the seeded simulation (test/sim): raft's connections
// between members travel through the tunnel (WireGuard over the relays)
// as the appliance's do through gVisor's TCP, but gVisor cannot run in a
// testing/synctest bubble (its goroutines park outside the runtime's
// notion of durable blocking, so virtual time never advances; see
// test/sim/doc.go). This is not TCP: no congestion control, no delayed
// acks, a fixed window; what it keeps of TCP's contract is what raft
// relies on: bytes arrive in order, once, or the connection fails
// (a reset, or silence for GiveUp).
//
// Segments: flags(1) id(4) port(2) seq(4) ack(4) payload. A connection is
// named by the id its dialer picked (unique in the process, so a restarted
// host never mistakes an old connection for a new one). Sequence numbers
// count segments, not bytes. A segment for an id the host does not know
// is answered with RST, as a restarted host's kernel does.
//
// Everything waits on channels and timers, so that it runs on virtual
// time inside a synctest bubble.
package pktstream

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	flagSYN = 1 << iota
	flagACK
	flagFIN
	flagRST
)

const (
	headerLen = 15
	// MSS is the largest payload of one segment.
	MSS = 1100
	// window is how many segments may be unacknowledged.
	window = 256
	// rtoMin, rtoMax bound the retransmission timeout (doubling on each
	// timeout without progress).
	rtoMin = 200 * time.Millisecond
	rtoMax = 2 * time.Second
	// GiveUp: a connection whose unacknowledged data (or SYN, or FIN) has
	// seen no acknowledgement for this long is reset, as TCP gives up on
	// an unreachable peer (much sooner than TCP's minutes, so that raft
	// redials within the simulation's time scale).
	GiveUp = 6 * time.Second
)

var nextID atomic.Uint32

// Stack is one host's streams.
type Stack struct {
	addr netip.Addr
	send func(dst netip.Addr, seg []byte) // may drop; must not block long or keep seg

	// Counters, for logs.
	Segs, Retransmitted, RSTs, Dials, Accepts, Failed atomic.Uint64

	mu        sync.Mutex
	conns     map[uint32]*Conn
	listeners map[uint16]*Listener
	closed    bool
}

// New returns the stack of the host at addr; send puts a segment on the
// path to dst.
func New(addr netip.Addr, send func(dst netip.Addr, seg []byte)) *Stack {
	return &Stack{addr: addr, send: send, conns: map[uint32]*Conn{}, listeners: map[uint16]*Listener{}}
}

// Close resets every connection and closes every listener without a word
// to the peers (a crashed host).
func (s *Stack) Close() {
	s.mu.Lock()
	s.closed = true
	cs := s.conns
	ls := s.listeners
	s.conns, s.listeners = map[uint32]*Conn{}, map[uint16]*Listener{}
	s.mu.Unlock()
	for _, c := range cs {
		c.fail(errReset)
	}
	for _, l := range ls {
		l.Close()
	}
}

type segment struct {
	flags    uint8
	id       uint32
	port     uint16
	seq, ack uint32
	payload  []byte
}

func (g segment) marshal() []byte {
	b := make([]byte, headerLen+len(g.payload))
	b[0] = g.flags
	binary.BigEndian.PutUint32(b[1:], g.id)
	binary.BigEndian.PutUint16(b[5:], g.port)
	binary.BigEndian.PutUint32(b[7:], g.seq)
	binary.BigEndian.PutUint32(b[11:], g.ack)
	copy(b[headerLen:], g.payload)
	return b
}

func parse(b []byte) (segment, bool) {
	if len(b) < headerLen {
		return segment{}, false
	}
	return segment{flags: b[0], id: binary.BigEndian.Uint32(b[1:]), port: binary.BigEndian.Uint16(b[5:]),
		seq: binary.BigEndian.Uint32(b[7:]), ack: binary.BigEndian.Uint32(b[11:]), payload: b[headerLen:]}, true
}

// Input hands the stack a segment that arrived from src. It does not keep b.
func (s *Stack) Input(src netip.Addr, b []byte) {
	g, ok := parse(b)
	if !ok {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	c := s.conns[g.id]
	if c == nil && g.flags&flagSYN != 0 && g.flags&flagACK == 0 {
		l := s.listeners[g.port]
		if l == nil {
			s.mu.Unlock()
			s.RSTs.Add(1)
			s.send(src, segment{flags: flagRST, id: g.id}.marshal())
			return
		}
		s.Accepts.Add(1)
		c = newConn(s, g.id, src, g.port, false)
		s.conns[g.id] = c
		s.mu.Unlock()
		select {
		case l.accept <- c:
		default: // backlog full: as if the SYN were lost
			s.forget(c)
			return
		}
		c.synAcked() // the dialer waits for our SYN|ACK
		return
	}
	s.mu.Unlock()
	if c == nil {
		if g.flags&flagRST == 0 {
			s.RSTs.Add(1)
			s.send(src, segment{flags: flagRST, id: g.id}.marshal())
		}
		return
	}
	if c.remote != src {
		return
	}
	c.input(g)
}

func (s *Stack) forget(c *Conn) {
	s.mu.Lock()
	if s.conns[c.id] == c {
		delete(s.conns, c.id)
	}
	s.mu.Unlock()
}

// Dial opens a connection to port of dst; it fails when dst answers RST
// (nothing listens), or ctx ends first.
func (s *Stack) Dial(ctx context.Context, dst netip.Addr, port uint16) (net.Conn, error) {
	id := nextID.Add(1)
	s.Dials.Add(1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, net.ErrClosed
	}
	c := newConn(s, id, dst, port, true)
	s.conns[id] = c
	s.mu.Unlock()
	c.mu.Lock()
	c.unacked = append(c.unacked, segment{flags: flagSYN, id: id, port: port, seq: 0})
	c.sndNxt = 1
	c.armLocked()
	c.mu.Unlock()
	c.transmit(segment{flags: flagSYN, id: id, port: port})
	select {
	case <-c.established:
		return c, nil
	case <-c.dead:
		return nil, c.err
	case <-ctx.Done():
		c.fail(ctx.Err())
		return nil, &net.OpError{Op: "dial", Net: "pktstream", Err: ctx.Err()}
	}
}

// Listen returns the listener of port.
func (s *Stack) Listen(port uint16) (*Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, net.ErrClosed
	}
	if s.listeners[port] != nil {
		return nil, syscall.EADDRINUSE
	}
	l := &Listener{s: s, port: port, accept: make(chan *Conn, 64), closed: make(chan struct{})}
	s.listeners[port] = l
	return l, nil
}

// Listener accepts the connections to one port.
type Listener struct {
	s      *Stack
	port   uint16
	accept chan *Conn
	closed chan struct{}
	once   sync.Once
}

var _ net.Listener = (*Listener)(nil)

func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.s.mu.Lock()
		if l.s.listeners[l.port] == l {
			delete(l.s.listeners, l.port)
		}
		l.s.mu.Unlock()
	})
	return nil
}

func (l *Listener) Addr() net.Addr { return addr{l.s.addr, l.port} }

type addr struct {
	ip   netip.Addr
	port uint16
}

func (a addr) Network() string { return "pktstream" }
func (a addr) String() string  { return netip.AddrPortFrom(a.ip, a.port).String() }

var (
	errReset   = &net.OpError{Op: "read", Net: "pktstream", Err: syscall.ECONNRESET}
	errRefused = &net.OpError{Op: "dial", Net: "pktstream", Err: syscall.ECONNREFUSED}
	errTimeout = &timeoutError{}
)

type timeoutError struct{}

func (*timeoutError) Error() string   { return "pktstream: i/o timeout" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }
func (*timeoutError) Unwrap() error   { return os.ErrDeadlineExceeded }

// Conn is one connection.
type Conn struct {
	s      *Stack
	id     uint32
	remote netip.Addr
	port   uint16 // the listening port
	dialer bool

	established chan struct{} // closed once the SYN is acknowledged
	estOnce     sync.Once
	dead        chan struct{} // closed on failure (err set) or full close
	deadOnce    sync.Once
	err         error         // why dead (guarded by mu until dead is closed)
	readable    chan struct{} // cap 1: data, EOF or failure arrived
	writable    chan struct{} // cap 1: window opened
	rdl, wdl    deadline

	mu         sync.Mutex
	sndNxt     uint32    // next segment number to send
	unacked    []segment // sent, not acknowledged, in order
	timer      *time.Timer
	rto        time.Duration
	progress   time.Time // last acknowledgement that moved sndUna (or start)
	rcvNxt     uint32
	ooo        map[uint32]segment // received ahead of rcvNxt
	rbuf       []byte
	eof        bool // the peer's FIN was received in order
	finSent    bool
	closedHere bool
}

var _ net.Conn = (*Conn)(nil)

func newConn(s *Stack, id uint32, remote netip.Addr, port uint16, dialer bool) *Conn {
	c := &Conn{s: s, id: id, remote: remote, port: port, dialer: dialer,
		established: make(chan struct{}), dead: make(chan struct{}),
		readable: make(chan struct{}, 1), writable: make(chan struct{}, 1),
		rdl: newDeadline(), wdl: newDeadline(), rto: rtoMin, progress: time.Now(), ooo: map[uint32]segment{}}
	if !dialer {
		c.rcvNxt = 1 // the SYN was segment 0
	}
	return c
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// synAcked answers the SYN that made this (accepted) connection.
func (c *Conn) synAcked() {
	c.estOnce.Do(func() { close(c.established) })
	c.transmit(segment{flags: flagSYN | flagACK, id: c.id, ack: 1})
}

func (c *Conn) transmit(g segment) {
	c.s.Segs.Add(1)
	c.s.send(c.remote, g.marshal())
}

// Stats summarises the counters and the open connections, for logs.
func (s *Stack) Stats() string {
	s.mu.Lock()
	n := len(s.conns)
	var unacked, ooo, rbuf int
	for _, c := range s.conns {
		c.mu.Lock()
		unacked += len(c.unacked)
		ooo += len(c.ooo)
		rbuf += len(c.rbuf)
		c.mu.Unlock()
	}
	s.mu.Unlock()
	return fmt.Sprintf("conns %d (unacked %d ooo %d unread %d bytes) segs %d retransmitted %d rst %d dials %d accepts %d failed %d",
		n, unacked, ooo, rbuf, s.Segs.Load(), s.Retransmitted.Load(), s.RSTs.Load(), s.Dials.Load(), s.Accepts.Load(), s.Failed.Load())
}

// fail ends the connection with err (nil: closed normally).
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.deadOnce.Do(func() {
		if err != nil {
			c.s.Failed.Add(1)
		}
		c.err = err
		close(c.dead)
	})
	c.mu.Unlock()
	signal(c.readable)
	signal(c.writable)
	c.s.forget(c)
}

func (c *Conn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// armLocked starts the retransmission timer if data is outstanding.
func (c *Conn) armLocked() {
	if len(c.unacked) == 0 || c.isDead() {
		if c.timer != nil {
			c.timer.Stop()
		}
		return
	}
	if c.timer == nil {
		c.timer = time.AfterFunc(c.rto, c.retransmit)
	} else {
		c.timer.Reset(c.rto)
	}
}

func (c *Conn) retransmit() {
	c.mu.Lock()
	if c.isDead() || len(c.unacked) == 0 {
		c.mu.Unlock()
		return
	}
	if time.Since(c.progress) > GiveUp {
		c.mu.Unlock()
		c.fail(&net.OpError{Op: "write", Net: "pktstream", Err: syscall.ETIMEDOUT})
		return
	}
	c.rto = min(2*c.rto, rtoMax)
	out := make([]segment, 0, min(len(c.unacked), 64))
	for _, g := range c.unacked[:min(len(c.unacked), 64)] {
		g.ack, g.flags = c.rcvNxt, g.flags|flagACK
		if g.flags&flagSYN != 0 && c.dialer {
			g.flags &^= flagACK
		}
		out = append(out, g)
	}
	c.armLocked()
	c.mu.Unlock()
	c.s.Retransmitted.Add(uint64(len(out)))
	for _, g := range out {
		c.transmit(g)
	}
}

func (c *Conn) input(g segment) {
	if g.flags&flagRST != 0 {
		select {
		case <-c.established:
			c.fail(errReset)
		default:
			c.fail(errRefused) // nothing listens there (any more)
		}
		return
	}
	if g.flags&flagSYN != 0 {
		if g.flags&flagACK != 0 && c.dialer { // our SYN answered
			c.estOnce.Do(func() { close(c.established) })
		} else if !c.dialer { // our SYN|ACK was lost: answer again
			c.transmit(segment{flags: flagSYN | flagACK, id: c.id, ack: 1})
			return
		}
	}
	var ackNow bool
	c.mu.Lock()
	if c.isDead() {
		c.mu.Unlock()
		return
	}
	// Acknowledgement.
	if g.flags&flagACK != 0 {
		n := 0
		for n < len(c.unacked) && int32(g.ack-c.unacked[n].seq) > 0 {
			n++
		}
		if n > 0 {
			c.unacked = c.unacked[n:]
			c.progress = time.Now()
			c.rto = rtoMin
			c.armLocked()
			signal(c.writable)
		}
	}
	finDone := c.finSent && len(c.unacked) == 0
	// Data (or FIN) in sequence space.
	if len(g.payload) > 0 || g.flags&flagFIN != 0 {
		ackNow = true
		switch d := int32(g.seq - c.rcvNxt); {
		case d == 0:
			c.takeLocked(g)
			for {
				next, ok := c.ooo[c.rcvNxt]
				if !ok {
					break
				}
				delete(c.ooo, c.rcvNxt)
				c.takeLocked(next)
			}
			signal(c.readable)
		case d > 0 && d < window:
			c.ooo[g.seq] = segment{flags: g.flags, seq: g.seq, payload: append([]byte(nil), g.payload...)}
		}
	}
	ack := c.rcvNxt
	bothDone := finDone && c.eof
	c.mu.Unlock()
	if ackNow {
		c.transmit(segment{flags: flagACK, id: c.id, ack: ack})
	}
	if bothDone {
		c.fail(nil)
	}
}

func (c *Conn) takeLocked(g segment) {
	c.rcvNxt++
	if len(g.payload) > 0 && !c.closedHere {
		c.rbuf = append(c.rbuf, g.payload...)
	}
	if g.flags&flagFIN != 0 {
		c.eof = true
	}
}

func (c *Conn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if len(c.rbuf) > 0 {
			n := copy(p, c.rbuf)
			c.rbuf = c.rbuf[n:]
			c.mu.Unlock()
			return n, nil
		}
		eof, closedHere := c.eof, c.closedHere
		c.mu.Unlock()
		switch {
		case closedHere:
			return 0, net.ErrClosed
		case eof:
			return 0, io.EOF
		case c.isDead():
			if c.err == nil {
				return 0, io.EOF
			}
			return 0, c.err
		}
		select {
		case <-c.readable:
		case <-c.dead:
		case <-c.rdl.wait():
			return 0, errTimeout
		}
	}
}

func (c *Conn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		switch {
		case c.closedHere || c.finSent:
			c.mu.Unlock()
			return written, net.ErrClosed
		case c.isDead():
			c.mu.Unlock()
			if c.err == nil {
				return written, net.ErrClosed
			}
			return written, &net.OpError{Op: "write", Net: "pktstream", Err: syscall.EPIPE}
		case len(c.unacked) >= window:
			c.mu.Unlock()
			select {
			case <-c.writable:
			case <-c.dead:
			case <-c.wdl.wait():
				return written, errTimeout
			}
			continue
		}
		n := min(len(p), MSS)
		g := segment{flags: flagACK, id: c.id, seq: c.sndNxt, ack: c.rcvNxt, payload: append([]byte(nil), p[:n]...)}
		c.sndNxt++
		c.unacked = append(c.unacked, g)
		if len(c.unacked) == 1 {
			c.progress = time.Now()
			c.armLocked()
		}
		c.mu.Unlock()
		c.transmit(g)
		p = p[n:]
		written += n
	}
	return written, nil
}

// Close sends FIN after what was written; the connection is gone once both
// FINs are acknowledged, or GiveUp after the peer stops answering.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closedHere {
		c.mu.Unlock()
		return nil
	}
	c.closedHere = true
	c.rbuf = nil
	if c.isDead() {
		c.mu.Unlock()
		return nil
	}
	g := segment{flags: flagACK | flagFIN, id: c.id, seq: c.sndNxt, ack: c.rcvNxt}
	c.sndNxt++
	c.finSent = true
	c.unacked = append(c.unacked, g)
	if len(c.unacked) == 1 {
		c.progress = time.Now()
	}
	c.armLocked()
	c.mu.Unlock()
	signal(c.readable)
	c.transmit(g)
	// Our reads are over: a peer that keeps sending gets acks until its
	// FIN, and the connection is forgotten then or at GiveUp.
	return nil
}

func (c *Conn) LocalAddr() net.Addr  { return addr{c.s.addr, 0} }
func (c *Conn) RemoteAddr() net.Addr { return addr{c.remote, c.port} }

func (c *Conn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}
func (c *Conn) SetReadDeadline(t time.Time) error  { c.rdl.set(t); return nil }
func (c *Conn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// String names the connection in logs.
func (c *Conn) String() string {
	return "pktstream " + c.remote.String() + ":" + strconv.Itoa(int(c.port)) + " id " + strconv.Itoa(int(c.id))
}

// deadline is a settable deadline whose wait channel is closed once it has
// passed (zero time: none).
type deadline struct {
	mu    *sync.Mutex
	timer **time.Timer
	ch    *chan struct{}
}

func newDeadline() deadline {
	ch := make(chan struct{})
	var t *time.Timer
	return deadline{mu: &sync.Mutex{}, timer: &t, ch: &ch}
}

func (d deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if *d.timer != nil {
		(*d.timer).Stop()
		*d.timer = nil
	}
	select {
	case <-*d.ch:
		*d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	ch := *d.ch
	if dur := time.Until(t); dur <= 0 {
		close(ch)
		return
	}
	var once sync.Once
	*d.timer = time.AfterFunc(time.Until(t), func() { once.Do(func() { close(ch) }) })
}

func (d deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return *d.ch
}

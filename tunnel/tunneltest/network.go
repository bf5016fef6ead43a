// Package tunneltest provides fakes for testing the tunnel without relays:
// an in-memory member-addressed packet network (like wireguard-go's
// conn/bindtest) and a test Authority (member CAs: see internal/testpki).
package tunneltest

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/memberd/memberd/tunnel"
)

// DefaultMaxPacketSize mimics a QUIC DATAGRAM frame's payload limit.
const DefaultMaxPacketSize = 1240

// ErrTooLarge is returned by WritePacket for packets over the limit, as
// quic-go returns DatagramTooLargeError. The packet is dropped.
var ErrTooLarge = errors.New("tunneltest: packet larger than the transport's limit")

// Options configure a Network. Zero values are defaults.
type Options struct {
	// MaxPacketSize is enforced on WritePacket and reported by
	// MaxPacketSize. 0 = DefaultMaxPacketSize.
	MaxPacketSize int
	// Queue is each member's receive queue in packets; a full queue drops,
	// like a UDP socket buffer. 0 = 2048.
	Queue int
	// Observe, if set, sees every packet sent (before any drop), like a
	// packet capture at the relay. It must not retain pkt.
	Observe func(from, to string, pkt []byte)
}

// Network is an in-memory, member-addressed, lossy packet network.
type Network struct {
	opt    Options
	mu     sync.RWMutex
	eps    map[string]*Transport
	filter atomic.Pointer[func(from, to string, pkt []byte) bool]
	pool   sync.Pool

	TooLarge, QueueFull, Filtered, NoRoute atomic.Uint64
}

// NewNetwork makes an empty network.
func NewNetwork(opt Options) *Network {
	if opt.MaxPacketSize == 0 {
		opt.MaxPacketSize = DefaultMaxPacketSize
	}
	if opt.Queue == 0 {
		opt.Queue = 2048
	}
	n := &Network{opt: opt, eps: map[string]*Transport{}}
	n.pool.New = func() any { b := make([]byte, 0, opt.MaxPacketSize); return &b }
	return n
}

// SetFilter installs f; packets for which it returns false are dropped.
// nil removes the filter.
func (n *Network) SetFilter(f func(from, to string, pkt []byte) bool) {
	if f == nil {
		n.filter.Store(nil)
		return
	}
	n.filter.Store(&f)
}

// Transport attaches member to the network (replacing any earlier
// attachment) and returns its transport.
func (n *Network) Transport(member string) *Transport {
	t := &Transport{n: n, member: member, rx: make(chan packet, n.opt.Queue), closed: make(chan struct{})}
	n.mu.Lock()
	n.eps[member] = t
	n.mu.Unlock()
	return t
}

var _ tunnel.PacketTransport = (*Transport)(nil)

// Transport is one member's attachment; it implements tunnel.PacketTransport.
type Transport struct {
	n      *Network
	member string
	rx     chan packet
	closed chan struct{}
	once   sync.Once
}

// WritePacket sends a copy of pkt to member; drops (returning nil, like
// UDP) when there is no such member or its queue is full.
func (t *Transport) WritePacket(pkt []byte, member string) error {
	select {
	case <-t.closed:
		return net.ErrClosed
	default:
	}
	if o := t.n.opt.Observe; o != nil {
		o(t.member, member, pkt)
	}
	if len(pkt) > t.n.opt.MaxPacketSize {
		t.n.TooLarge.Add(1)
		return fmt.Errorf("%w: %d > %d bytes", ErrTooLarge, len(pkt), t.n.opt.MaxPacketSize)
	}
	if f := t.n.filter.Load(); f != nil && !(*f)(t.member, member, pkt) {
		t.n.Filtered.Add(1)
		return nil
	}
	t.n.mu.RLock()
	dst := t.n.eps[member]
	t.n.mu.RUnlock()
	if dst == nil {
		t.n.NoRoute.Add(1)
		return nil
	}
	bp := t.n.pool.Get().(*[]byte)
	*bp = append((*bp)[:0], pkt...)
	select {
	case dst.rx <- packet{bp: bp, from: t.member}:
	default:
		t.n.QueueFull.Add(1)
		t.n.pool.Put(bp)
	}
	return nil
}

type packet struct {
	bp   *[]byte
	from string
}

// ReadPacket blocks for the next packet; net.ErrClosed after Close.
func (t *Transport) ReadPacket(buf []byte) (int, string, error) {
	select {
	case <-t.closed:
		return 0, "", net.ErrClosed
	case p := <-t.rx:
		pkt := *p.bp
		if len(pkt) > len(buf) {
			t.n.pool.Put(p.bp)
			return 0, p.from, fmt.Errorf("tunneltest: %d-byte packet does not fit a %d-byte buffer", len(pkt), len(buf))
		}
		n := copy(buf, pkt)
		t.n.pool.Put(p.bp)
		return n, p.from, nil
	}
}

// MaxPacketSize reports the enforced limit.
func (t *Transport) MaxPacketSize() int { return t.n.opt.MaxPacketSize }

// Close detaches the member; idempotent.
func (t *Transport) Close() error {
	t.once.Do(func() {
		close(t.closed)
		t.n.mu.Lock()
		if t.n.eps[t.member] == t {
			delete(t.n.eps, t.member)
		}
		t.n.mu.Unlock()
	})
	return nil
}

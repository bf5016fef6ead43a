package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Endpoint is a WireGuard endpoint that is a member id: the transport routes
// by member, never by IP address.
type Endpoint string

var _ conn.Endpoint = Endpoint("")

func (e Endpoint) ClearSrc()           {}
func (e Endpoint) SrcToString() string { return "" }
func (e Endpoint) DstToString() string { return string(e) }
func (e Endpoint) DstToBytes() []byte  { return []byte(e) } // mac2 cookie input
func (e Endpoint) DstIP() netip.Addr   { return netip.Addr{} }
func (e Endpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// Bind is a wireguard-go conn.Bind over a PacketTransport. Endpoints are
// member ids. Control packets (see control.go) are split off on receive and
// handed to the control function; WireGuard never sees them.
//
// Besides, it watches for the WireGuard packets that mark a peer's key
// switch (promote.go) and reports them on its switches channel, holding
// the packet until the driver handled it (at most switchWait); the Bind
// calls nothing of the Device.
//
// Lifecycle: Open may be called once; Close closes the transport if Open
// was called (wireguard-go calls Close before the first Open), after which
// the receive function returns net.ErrClosed. A Bind is not reopened.
type Bind struct {
	tr      PacketTransport
	control func(sender string, pkt []byte) // must not block or retain pkt
	log     *slog.Logger
	// switches receives a handshake response about to be sent (arm) and
	// the first packet of an armed session (fire); nil: not watched.
	switches chan<- switchReq
	wait     time.Duration // bound of a switch report: switchWait
	armed    armedSessions
	// switchMissed counts switch reports not handled within switchWait.
	switchMissed atomic.Uint64

	mu      sync.Mutex
	opened  bool
	closed  atomic.Bool
	readErr atomic.Uint64 // transient read errors, for status

	pktIn, pktOut, bytesIn, bytesOut atomic.Uint64 // WireGuard packets (not control)
}

var _ conn.Bind = (*Bind)(nil)

// NewBind wraps tr. control receives every control packet (a copy is not
// made: it must copy what it keeps); nil drops them.
func NewBind(tr PacketTransport, control func(sender string, pkt []byte), log *slog.Logger) *Bind {
	return newBind(tr, control, log, nil)
}

// newBind is NewBind that reports key-switch packets on switches.
func newBind(tr PacketTransport, control func(sender string, pkt []byte), log *slog.Logger, switches chan<- switchReq) *Bind {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Bind{tr: tr, control: control, log: log, switches: switches, wait: switchWait}
}

// Open starts receiving. port is meaningless for a member-addressed
// transport and reported back unchanged.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return nil, 0, net.ErrClosed
	}
	if b.opened {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	b.opened = true
	return []conn.ReceiveFunc{b.receive}, port, nil
}

// batchReader is a PacketTransport that can hand over the packets already
// waiting in one call (relay.Client does): ReadPackets blocks for the
// first packet like ReadPacket, then takes what is queued, up to len(bufs).
type batchReader interface {
	ReadPackets(bufs [][]byte, sizes []int, from []string) (int, error)
}

// bindBatch is the Bind's batch size over a batchReader: how many packets
// one receive call hands WireGuard (which decrypts a batch in one go, and
// keeps this many message buffers per receive goroutine).
const bindBatch = 32

func (b *Bind) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	var from [bindBatch]string
	br, batched := b.tr.(batchReader)
	for {
		var k int
		var err error
		if batched {
			k, err = br.ReadPackets(bufs[:min(len(bufs), bindBatch)], sizes, from[:])
		} else {
			sizes[0], from[0], err = b.tr.ReadPacket(bufs[0])
			k = 1
		}
		if err != nil {
			if b.closed.Load() || errors.Is(err, net.ErrClosed) {
				return 0, net.ErrClosed
			}
			// wireguard-go gives up receiving after a few errors in a row;
			// the transport's errors are transient (a relay reconnecting),
			// so log, pause briefly and keep going.
			if b.readErr.Add(1)%100 == 1 {
				b.log.Warn("tunnel transport read failed; retrying", "err", err)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		// Control packets go to the control function and are left out of
		// the batch with size 0, which WireGuard skips (wireguard-go reads
		// packet i from its own buffer i, so the batch is not compacted).
		data := 0
		for i := 0; i < k; i++ {
			pkt := bufs[i][:sizes[i]]
			member := from[i]
			if isControl(pkt) {
				if b.control != nil {
					b.control(member, pkt)
				}
				sizes[i] = 0
				eps[i] = nil
				continue
			}
			if b.switches != nil && len(pkt) >= transportHeaderSize && pkt[0] == wgTransportType &&
				b.armed.match(member, binary.LittleEndian.Uint32(pkt[4:8])) {
				// The first packet of an armed session: its promotion
				// moves the member's address before WireGuard sees it.
				b.reportSwitch(switchReq{member: member})
			}
			if i > 0 && member == from[i-1] && eps[i-1] != nil {
				eps[i] = eps[i-1]
			} else {
				eps[i] = Endpoint(member)
			}
			b.pktIn.Add(1)
			b.bytesIn.Add(uint64(len(pkt)))
			data++
		}
		if data > 0 {
			return k, nil
		}
	}
}

// Close closes the transport (once), if the Bind was opened.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.opened || b.closed.Swap(true) {
		return nil
	}
	return b.tr.Close()
}

// SetMark is meaningless here.
func (b *Bind) SetMark(uint32) error { return nil }

// Send writes each packet to the member ep names.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	for _, p := range bufs {
		if b.switches != nil && len(p) == messageResponseSize && p[0] == wgResponseType {
			b.reportSwitch(switchReq{member: string(e), resp: append([]byte(nil), p...)})
		}
		if err := b.tr.WritePacket(p, string(e)); err != nil {
			return fmt.Errorf("send %d-byte WireGuard packet to %s: %w", len(p), e, err)
		}
		b.pktOut.Add(1)
		b.bytesOut.Add(uint64(len(p)))
	}
	return nil
}

// reportSwitch hands r to the driver and waits until it is done, at most
// switchWait (then the packet goes on; the polled promotion applies).
func (b *Bind) reportSwitch(r switchReq) {
	r.done = make(chan struct{})
	t := time.NewTimer(b.wait)
	defer t.Stop()
	select {
	case b.switches <- r:
	case <-t.C:
		b.switchMissed.Add(1)
		return
	}
	select {
	case <-r.done:
	case <-t.C:
		b.switchMissed.Add(1)
	}
}

// ParseEndpoint accepts a member id.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if err := validMemberID(s); err != nil {
		return nil, err
	}
	return Endpoint(s), nil
}

// BatchSize is bindBatch when the transport hands over packets in
// batches (batchReader), else 1.
func (b *Bind) BatchSize() int {
	if _, ok := b.tr.(batchReader); ok {
		return bindBatch
	}
	return 1
}

func validMemberID(s string) error {
	if s == "" || len(s) > maxMemberIDLen {
		return fmt.Errorf("member id %q must be 1..%d bytes", s, maxMemberIDLen)
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c == 0x7f || c == '=' {
			return fmt.Errorf("member id %q contains a space, control character or '='", s)
		}
	}
	return nil
}

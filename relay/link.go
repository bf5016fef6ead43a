package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/internal/diag"
	"github.com/memberd/memberd/relay/wire"
)

// Path is how a client reaches a relay.
type Path string

// Paths, best first.
const (
	PathQUIC  Path = "quic"  // QUIC over UDP, packets in DATAGRAM frames
	PathTCP   Path = "tcp"   // TLS over TCP, length-prefixed frames
	PathProxy Path = "proxy" // TLS over TCP through an HTTP CONNECT proxy
)

// Drop reasons, the values of the "reason" label.
const (
	DropACL       = "acl"        // the policy does not allow from -> to
	DropRateLimit = "rate_limit" // the sender exceeded its rate
	DropQueueFull = "queue_full" // the receiver's send queue was full
	DropNoRoute   = "no_route"   // the destination is not connected anywhere
	DropTooLarge  = "too_large"  // larger than the path allows
	DropMalformed = "malformed"  // a frame that does not parse
	DropClosed    = "closed"     // the path closed while the packet waited
	// DropUnknownType: a frame of a type this version does not know (a
	// later version's, or garbage that parsed as a header); skipped.
	DropUnknownType = "unknown_type"
	// DropUnexpected: a known frame type that the sender's role must not
	// send on an established link (FORWARD or ROUTE_ADD from a member,
	// PACKET from a relay, a second HELLO...); ignored.
	DropUnexpected = "unexpected_type"
)

// QUIC application error codes used when closing.
const (
	codeShutdown   quic.ApplicationErrorCode = 1
	codeNotAllowed quic.ApplicationErrorCode = 2
	codeProtocol   quic.ApplicationErrorCode = 3
)

// link is one established relay protocol connection, either side, either
// transport. Frames to send go through bounded queues served by one writer
// goroutine: ctrl (never dropped while open), then urgent and data (both
// dropped when full, UDP-like): urgent holds the small data frames (see
// urgentFrame), data the others and those queued by sendStream. On QUIC,
// the urgent frames travel as DATAGRAMs (one larger than the datagram
// limit falls back to the control stream), the others on the control
// stream (see writeLoop).
type link struct {
	path        Path
	qconn       *quic.Conn    // nil on TCP
	stream      io.ReadWriter // QUIC control stream or *tls.Conn
	closer      func(code quic.ApplicationErrorCode, reason string)
	tls         tls.ConnectionState
	maxBody     int
	maxDatagram atomic.Int64  // QUIC: largest datagram payload (grows while settling)
	settled     chan struct{} // closed once maxDatagram is final

	ctrl   chan []byte
	urgent *fairQueue    // small data frames, fair between sources
	data   *fairQueue    // the other data frames, fair between sources
	ready  chan struct{} // poked when urgent or data gets a frame

	done      chan struct{}
	closeOnce sync.Once

	bytesIn, bytesOut atomic.Uint64
	lastRecv          atomic.Int64           // unix nanos
	goAway            atomic.Pointer[string] // reason from the peer's GOAWAY
	resentFor         atomic.Int64           // client: lastRecv when its recent packets were last resent elsewhere
	upAt              int64                  // unix nanos when established; set before the link is shared
	// streamTypes: a TLS link to a relay whose HELLO set
	// wire.HelloStreamTypes; a packet frame queued for the stream
	// (sendStream) goes as PACKET_STREAM or FORWARD_STREAM, so that the
	// relay keeps it on the next hop's stream too. Set before the link is
	// shared.
	streamTypes bool
	drop        func(reason string)
}

func newLink(path Path, qc *quic.Conn, stream io.ReadWriter, cs tls.ConnectionState,
	closer func(quic.ApplicationErrorCode, string), queueLen int, drop func(string)) *link {
	l := &link{
		path: path, qconn: qc, stream: stream, closer: closer, tls: cs,
		maxBody: wire.MaxBody,
		ctrl:    make(chan []byte, 64),
		ready:   make(chan struct{}, 1),
		done:    make(chan struct{}),
		settled: make(chan struct{}),
		drop:    drop,
	}
	l.urgent = newFairQueue(urgentQueueLen, l.ready)
	l.data = newFairQueue(queueLen, l.ready)
	if path != PathQUIC {
		close(l.settled)
	}
	l.upAt = time.Now().UnixNano()
	l.lastRecv.Store(l.upAt)
	return l
}

// quicLink wraps an established QUIC connection and its control stream.
func quicLink(qc *quic.Conn, st *quic.Stream, queueLen int, drop func(string)) *link {
	return newLink(PathQUIC, qc, st, qc.ConnectionState().TLS, func(code quic.ApplicationErrorCode, reason string) {
		_ = qc.CloseWithError(code, reason)
	}, queueLen, drop)
}

// streamLink wraps an established TLS connection.
func streamLink(path Path, tc *tls.Conn, queueLen int, drop func(string)) *link {
	return newLink(path, nil, tc, tc.ConnectionState(), func(code quic.ApplicationErrorCode, reason string) {
		// Tell the peer why (QUIC carries the reason in CONNECTION_CLOSE;
		// on TCP a GOAWAY frame does), without waiting long for it.
		_ = tc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = tc.Write(wire.AppendGoAway(nil, goAwayCode(code), reason))
		_ = tc.Close()
	}, queueLen, drop)
}

func goAwayCode(c quic.ApplicationErrorCode) uint8 {
	switch c {
	case codeShutdown:
		return wire.GoAwayShutdown
	case codeNotAllowed:
		return wire.GoAwayNotAllowed
	}
	return wire.GoAwayProtocol
}

// close closes the link once, telling the peer why when it can.
func (l *link) close(code quic.ApplicationErrorCode, reason string) {
	l.closeOnce.Do(func() {
		close(l.done)
		l.closer(code, reason)
	})
}

func (l *link) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// The frame pools recycle data frame buffers: a sender builds a frame in
// one (newFrame), the writer recycles it once the transport has copied it
// (quic-go's SendDatagram copies, stream writers do not retain what they
// are given). One 1.2 KB allocation and clearing per packet and hop was
// the largest item of the relay's own data-path CPU profile. There is one
// pool per size class, so that a frame pins about its own size while it
// waits in a queue (fairQueue counts capacity): with one class of
// pooledFrame, a 100-byte heartbeat pinned 16 KiB and a link's full queues
// up to 12.6 MB (TestQueuedMemoryPerLink). The pools hold buffers only
// while they are out of use.
var (
	smallFramePool  = sync.Pool{New: func() any { return new([smallFrame]byte) }}
	mediumFramePool = sync.Pool{New: func() any { return new([mediumFrame]byte) }}
	largeFramePool  = sync.Pool{New: func() any { return new([pooledFrame]byte) }}
)

// Frame buffer size classes: small holds an urgent frame (urgentFrame) and
// other short control-sized packets; medium a packet frame of the tunnel's
// former largest packet (4096 bytes, boundFrame), which covers its usual
// 1.3 KB ones; pooledFrame a packet frame of MaxPacketSizeTCP, the
// tunnel's largest.
const (
	smallFrame  = 512
	mediumFrame = boundFrame
	pooledFrame = MaxPacketSizeTCP + wire.ForwardOverhead
)

// newFrame returns an empty buffer with room for n bytes, from the
// smallest class that fits, recycled when possible. Pass it to sendData,
// which takes ownership.
func newFrame(n int) []byte {
	switch {
	case n <= smallFrame:
		return smallFramePool.Get().(*[smallFrame]byte)[:0]
	case n <= mediumFrame:
		return mediumFramePool.Get().(*[mediumFrame]byte)[:0]
	case n <= pooledFrame:
		return largeFramePool.Get().(*[pooledFrame]byte)[:0]
	}
	return make([]byte, 0, n)
}

// recycleFrame returns a frame that nothing references any more to the
// pool of its class (by capacity); others are left to the collector.
func recycleFrame(b []byte) {
	switch cap(b) {
	case smallFrame:
		smallFramePool.Put((*[smallFrame]byte)(b[:smallFrame]))
	case mediumFrame:
		mediumFramePool.Put((*[mediumFrame]byte)(b[:mediumFrame]))
	case pooledFrame:
		largeFramePool.Put((*[pooledFrame]byte)(b[:pooledFrame]))
	}
}

// urgentFrame: a data frame up to this size goes out before the larger
// ones queued (link.urgent). Consensus first (issue #15): a raft
// heartbeat, vote or append answer, a TCP acknowledgement, a ping or a
// key-switch handshake through the tunnel is a frame of 100-200 bytes,
// bulk transfer (block replication, catch-up, service forwards) comes in
// full-size packets; without this a heartbeat waited behind up to
// QueueLen of them (tens of ms per hop when the path is saturated) and was
// dropped with them when the queue filled. Reordering small packets ahead
// of large ones is harmless: WireGuard's replay window accepts packets out
// of order, and within one TCP connection only a short tail segment can
// overtake its predecessors, too few duplicate acknowledgements to trigger
// a retransmission. diag.NoPriority (MEMBERD_DIAG_NO_PRIORITY=1,
// benchmarks only) turns this off: small frames then queue with the others.
const urgentFrame = 256

// urgentQueueLen bounds the urgent queue (in frames, then dropped).
const urgentQueueLen = 256

// sendData queues a data frame of the link's own (a ping, a pong): source
// "" in the fair queues (see sendFrom).
func (l *link) sendData(frame []byte) bool { return l.sendFrom("", frame, false) }

// sendStream queues a data frame like sendData, but one that travels on
// the control stream on QUIC, never in a DATAGRAM, whatever its size: a
// burst of frames (the packets resent through a backup relay, see
// Client.resend), which as DATAGRAMs overflowed quic-go's 128-entry
// DATAGRAM receive queue at the relay and at the receiving member, where
// they were discarded without a trace. On the stream they are batched into
// full-size QUIC packets and never dropped by quic-go. On TLS everything
// travels on the stream, and the relay cannot tell such a frame from the
// others: to a relay that announced it (streamTypes) a PACKET or FORWARD
// goes as PACKET_STREAM or FORWARD_STREAM, which the relay passes on the
// next hop's stream; to an older relay as it is.
func (l *link) sendStream(frame []byte) bool { return l.sendFrom("", frame, true) }

// send is sendStream when stream is set, else sendData.
func (l *link) send(frame []byte, stream bool) bool { return l.sendFrom("", frame, stream) }

// sendFrom queues a data frame carrying a packet from member src (see
// fairQueue: the link's writer is shared fairly between sources); on the
// stream when stream is set (see sendStream), else by size (urgentFrame).
// It never blocks and reports false (after counting the drop) when the
// link is closed or the frame does not fit; a frame of another source
// pushed out to make room is counted too. The link owns frame from then
// on: the caller must not use it again.
func (l *link) sendFrom(src string, frame []byte, stream bool) bool {
	if l.closed() {
		l.drop(DropClosed)
		recycleFrame(frame)
		return false
	}
	q := l.data
	if !stream && len(frame) <= urgentFrame && !diag.NoPriority {
		q = l.urgent
	}
	if stream && l.streamTypes && len(frame) > 0 {
		frame[0] = byte(wire.StreamType(wire.Type(frame[0])))
	}
	mine := false
	for _, out := range q.push(src, frame) {
		l.drop(DropQueueFull)
		mine = mine || sameFrame(out, frame)
		recycleFrame(out)
	}
	return !mine
}

// sameFrame reports whether a and b are the same buffer.
func sameFrame(a, b []byte) bool { return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0]) }

// sendCtrl queues a control frame, waiting for room up to ctx. Like
// sendData, it takes ownership of frame.
func (l *link) sendCtrl(ctx context.Context, frame []byte) error {
	select {
	case l.ctrl <- frame:
		return nil
	case <-l.done:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// next returns the next frame to send: a control frame first, then an
// urgent one, then a data frame (each queue fair between sources). urgent
// says it came from the urgent queue (on QUIC: a DATAGRAM). With wait it
// blocks until a frame is queued or the link closes (ok false); without,
// it returns ok false at once when all queues are empty.
func (l *link) next(wait bool) (f []byte, urgent, ok bool) {
	for {
		select {
		case f = <-l.ctrl:
			return f, false, true
		default:
		}
		if f = l.urgent.pop(); f != nil {
			return f, true, true
		}
		if f = l.data.pop(); f != nil {
			return f, false, true
		}
		if !wait {
			return nil, false, false
		}
		select {
		case f = <-l.ctrl:
			return f, false, true
		case <-l.ready:
		case <-l.done:
			return nil, false, false
		}
	}
}

// writeLoop sends queued frames until the link closes.
//
// On QUIC, small data frames (up to urgentFrame: heartbeats, TCP
// acknowledgements, pings; not those queued by sendStream) travel as
// DATAGRAMs, everything else on the
// control stream, frames queued meanwhile together in one write (up to
// streamBatch), as on TLS. Why (issue #15): bulk packets as DATAGRAMs cost
// one sendmsg and one QUIC packet each (quic-go batches with GSO only
// full-size packets, which a DATAGRAM packet never is) and were lost in
// quic-go's 128-entry DATAGRAM receive queue whenever the reading
// goroutine was not scheduled for a millisecond (relay/README.md), which
// put the tunnel's TCP into loss recovery. On the stream they fill
// full-size packets, are batched and are never dropped by quic-go. Every
// receiver, old ones included, already reads data frames from the stream
// (a packet too large for a datagram went there before).
func (l *link) writeLoop() error {
	if l.qconn == nil {
		return l.streamWriteLoop()
	}
	buf := make([]byte, 0, streamBatch+pooledFrame)
	for {
		f, urgent, ok := l.next(true)
		if !ok {
			return nil
		}
		buf = buf[:0]
		for {
			if urgent { // small data frames (sendData): DATAGRAMs
				err := l.qconn.SendDatagram(f)
				var tooLarge *quic.DatagramTooLargeError
				switch {
				case err == nil:
					l.bytesOut.Add(uint64(len(f)))
				case errors.As(err, &tooLarge): // a tiny path: the stream
					buf = append(buf, f...)
				default:
					return err
				}
			} else {
				buf = append(buf, f...)
			}
			recycleFrame(f)
			if len(buf) >= streamBatch {
				break
			}
			if f, urgent, ok = l.next(false); !ok {
				break
			}
		}
		if len(buf) == 0 {
			continue
		}
		if _, err := l.stream.Write(buf); err != nil {
			return err
		}
		l.bytesOut.Add(uint64(len(buf)))
		if cap(buf) > 4*streamBatch { // a rare oversized control frame
			buf = make([]byte, 0, streamBatch+pooledFrame)
		}
	}
}

// streamBatch bounds the bytes a TLS stream link writes at once: about one
// TLS record (16 KiB of plaintext).
const streamBatch = 16 << 10

// streamWriteLoop is writeLoop for TLS links: frames queued while the
// previous write ran go out together, in one TLS record and one write
// system call instead of one per packet (in next's order: control, urgent,
// data). It never waits for more frames: a lone packet leaves at once.
func (l *link) streamWriteLoop() error {
	buf := make([]byte, 0, streamBatch+pooledFrame)
	for {
		f, _, ok := l.next(true)
		if !ok {
			return nil
		}
		buf = append(buf[:0], f...)
		recycleFrame(f)
		for len(buf) < streamBatch {
			if f, _, ok = l.next(false); !ok {
				break
			}
			buf = append(buf, f...)
			recycleFrame(f)
		}
		if _, err := l.stream.Write(buf); err != nil {
			return err
		}
		l.bytesOut.Add(uint64(len(buf)))
		if cap(buf) > 4*streamBatch { // a rare oversized control frame
			buf = make([]byte, 0, streamBatch+pooledFrame)
		}
	}
}

// frameHandler is called for every frame a link receives. When owned is
// false the body aliases the reader's buffer and must not be retained;
// when true (a QUIC datagram, freshly allocated by quic-go) the handler
// may keep it.
type frameHandler func(f wire.Frame, owned bool)

// readLoop calls handle for every frame from the stream and, on QUIC, from
// datagrams, until the link fails or closes. handle runs on up to two
// goroutines at once (stream and datagrams).
func (l *link) readLoop(ctx context.Context, handle frameHandler) error {
	errc := make(chan error, 2)
	n := 1
	if l.qconn != nil {
		n = 2
		go func() {
			errc <- guarded(func() error {
				for {
					b, err := l.qconn.ReceiveDatagram(ctx)
					if err != nil {
						return err
					}
					l.bytesIn.Add(uint64(len(b)))
					l.lastRecv.Store(time.Now().UnixNano())
					f, err := wire.ParseDatagram(b)
					if err != nil {
						l.drop(DropMalformed)
						continue
					}
					handle(f, true)
				}
			})
		}()
	}
	go func() {
		errc <- guarded(func() error {
			r := wire.NewReader(l.stream, l.maxBody)
			r.Skipped = func(t wire.Type, n int) { // the reader skips unknown types: count them
				l.bytesIn.Add(uint64(wire.HeaderLen + n))
				l.lastRecv.Store(time.Now().UnixNano())
				handle(wire.Frame{Type: t}, false)
			}
			for {
				f, err := r.Next()
				if err != nil {
					return err
				}
				l.bytesIn.Add(uint64(wire.HeaderLen + len(f.Body)))
				l.lastRecv.Store(time.Now().UnixNano())
				handle(f, false)
			}
		})
	}()
	err := <-errc
	l.close(codeProtocol, "read failed")
	for i := 1; i < n; i++ {
		<-errc
	}
	return err
}

// run runs the writer and reader until either ends, then closes the link
// and returns the first error. All goroutines have exited on return.
func (l *link) run(ctx context.Context, handle frameHandler) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	werr := make(chan error, 1)
	go func() {
		err := guarded(l.writeLoop)
		l.close(codeProtocol, "write failed")
		werr <- err
	}()
	stop := context.AfterFunc(ctx, func() { l.close(codeShutdown, "shutting down") })
	defer stop()
	rerr := l.readLoop(ctx, handle)
	err := <-werr
	// Drain what is left so queued frames are counted, not silently lost.
	for _, q := range []*fairQueue{l.urgent, l.data} {
		q.drain(func(f []byte) {
			l.drop(DropClosed)
			recycleFrame(f)
		})
	}
	if rerr != nil {
		return rerr
	}
	return err
}

// keepalive pings l every interval, each ping carrying its send time (the
// peer echoes it in a pong, from which a client measures RTT), until ctx
// ends or l closes. Once nothing arrived on l for giveUp it calls onGiveUp
// (if not nil) with how long l was silent and closes l.
func (l *link) keepalive(ctx context.Context, interval, giveUp time.Duration, onGiveUp func(silent time.Duration)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.done:
			return
		case now := <-t.C:
			if silent := now.Sub(time.Unix(0, l.lastRecv.Load())); silent > giveUp {
				if onGiveUp != nil {
					onGiveUp(silent)
				}
				l.close(codeProtocol, "no answer to pings")
				return
			}
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(now.UnixNano()))
			l.sendData(wire.AppendFrame(nil, wire.TypePing, b[:]))
		}
	}
}

// closeIfIdle closes l once no frame arrived on it for idle, first calling
// onIdle with how long it was silent. One timer per link, re-armed for
// the last frame's time plus idle whenever it fires early; stop cancels it.
func (l *link) closeIfIdle(idle time.Duration, onIdle func(silent time.Duration)) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped || l.closed() {
			return
		}
		silent := time.Since(time.Unix(0, l.lastRecv.Load()))
		if silent < idle {
			t.Reset(idle - silent)
			return
		}
		onIdle(silent)
		l.close(codeProtocol, "idle: nothing received for "+idle.String())
	}
	mu.Lock()
	t = time.AfterFunc(idle, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

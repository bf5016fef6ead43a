package raftlog

// Compressed raft messages (issue #11, #15). Between appliances raft runs
// through the WireGuard tunnel, where every byte costs CPU in gVisor's TCP,
// wireguard-go and QUIC, and where a follower back from a partition waits
// for the leader's log since its last snapshot. Appends and snapshots carry
// blocks of Fabric envelopes whose creator certificates repeat in every
// envelope, so they compress well: measured on blocks of 500 bench
// envelopes of 1 KB, S2 (github.com/klauspost/compress/s2) shrinks them
// 9.5 times (1.47 times with random payloads) at about 1 GB/s of one core
// to compress and 1.2-1.7 GB/s to decompress; zstd's fastest level gained
// 10-20 % more ratio at a fifth of the speed, snappy and flate were slower
// for less (codec_test.go has the benchmark).
//
// Negotiation, per connection (frame.go): after its lane and addr frames
// the dialer sends a codecs frame listing the codecs it can compress with;
// a listener that can decompress one answers with a codecs frame naming
// it (or an empty one: none), the only frame a listener ever sends after
// the handshake. The dialer reads that answer in the background and
// compresses from then on; until then, and for ever with an older listener
// (which skips the codecs frame as an unknown type and answers nothing),
// it sends plain msg frames. An older dialer sends no codecs frame, so it
// never receives a compressed frame. A listener takes a zmsg frame only in
// the codec it chose on that connection.
//
// Only messages of at least compressMin bytes are compressed (heartbeats,
// votes and append answers are tens of bytes: they travel as before), and
// a message that does not shrink by an eighth travels plain, so that the
// receiver does not pay for nothing; after such a message the sender skips
// the attempt for the next few (compressGate), so that incompressible
// payloads do not cost a failed attempt per message and per follower. A zmsg frame's decompressed length is
// read from its header and checked against the receiver's frame limit
// before anything is allocated (no decompression bomb); a corrupt or
// oversized one is counted (DropBadCompressed) and closes the connection.

import (
	"fmt"

	"github.com/klauspost/compress/s2"
)

// Codec IDs on the wire.
const (
	codecNone byte = 0
	codecS2   byte = 1 // S2 block format (klauspost/compress/s2)
)

// compressMin: messages smaller than this travel plain.
const compressMin = 1024

// appendCompressed appends to dst a zmsg frame of raw compressed with
// codec, or returns ok false (dst unchanged) when raw is too small or
// does not shrink by an eighth.
func appendCompressed(dst []byte, codec byte, raw []byte) (_ []byte, ok bool) {
	if codec != codecS2 || len(raw) < compressMin {
		return dst, false
	}
	start := len(dst)
	dst = appendFrameHeader(dst, frameZMsg, 0)
	dst = append(dst, codec)
	n := s2.MaxEncodedLen(len(raw))
	if n < 0 {
		return dst[:start], false
	}
	dst = append(dst, make([]byte, n)...)
	z := s2.Encode(dst[start+frameHeaderLen+1:], raw)
	if len(z) > len(raw)-len(raw)/8 {
		return dst[:start], false
	}
	dst = dst[:start+frameHeaderLen+1+len(z)]
	return patchFrameLen(dst, start), true
}

// maxSkip bounds compressGate's run of messages sent plain untried.
const maxSkip = 32

// compressGate spares a connection's sender attempts that fail: after a
// message that did not shrink by an eighth (random payloads, already
// compressed data), the next messages travel plain without an attempt,
// 1 after the first failure, then 2, 4 ... up to maxSkip after failures in
// a row; one attempt that shrinks resets it. So a stream of incompressible
// appends costs an attempt every maxSkip messages instead of every one,
// and compressible data is compressed again at most maxSkip messages after
// it comes back. Messages under compressMin neither use nor count
// attempts. Not safe for concurrent use (one per pump).
type compressGate struct {
	skip int // messages to send plain after the next failure, less one doubling
	left int // messages still to send plain untried
}

// append is appendCompressed, unless the gate says to send raw plain
// without trying (ok false, dst unchanged).
func (g *compressGate) append(dst []byte, codec byte, raw []byte) (_ []byte, ok bool) {
	if codec != codecS2 || len(raw) < compressMin {
		return dst, false
	}
	if g.left > 0 {
		g.left--
		return dst, false
	}
	dst, ok = appendCompressed(dst, codec, raw)
	if ok {
		g.skip = 0
	} else {
		g.skip = min(max(1, 2*g.skip), maxSkip)
		g.left = g.skip
	}
	return dst, ok
}

// decompressor decompresses zmsg frame payloads, reusing one buffer
// (results are valid until the next call).
type decompressor struct {
	codec byte // the codec chosen on this connection; codecNone: none
	max   int  // largest decompressed message accepted
	buf   []byte
}

// decode returns the message in a zmsg payload: codec(1) then the
// compressed message. Errors wrap ErrProtocol or ErrTooLarge.
func (d *decompressor) decode(p []byte) ([]byte, error) {
	if len(p) < 1 {
		return nil, fmt.Errorf("%w: empty compressed frame", ErrProtocol)
	}
	if p[0] != d.codec || d.codec == codecNone {
		return nil, fmt.Errorf("%w: compressed frame in codec %d, the connection agreed on %d", ErrProtocol, p[0], d.codec)
	}
	n, err := s2.DecodedLen(p[1:])
	if err != nil {
		return nil, fmt.Errorf("%w: corrupt compressed frame: %v", ErrProtocol, err)
	}
	if n > d.max {
		return nil, fmt.Errorf("%w: compressed frame of %d bytes decompresses to %d, limit %d", ErrTooLarge, len(p), n, d.max)
	}
	if cap(d.buf) < n {
		d.buf = make([]byte, n)
	}
	b, err := s2.Decode(d.buf[:n], p[1:])
	if err != nil {
		return nil, fmt.Errorf("%w: corrupt compressed frame: %v", ErrProtocol, err)
	}
	if cap(d.buf) > 1<<20 && n < 64<<10 {
		d.buf = nil // drop a buffer grown by one large message
	}
	return b, nil
}

// chooseCodec picks, from the codecs a dialer offers, the one this node
// decompresses (codecNone if none or if this node offers none).
func chooseCodec(offer []byte, enabled bool) byte {
	if !enabled {
		return codecNone
	}
	for _, c := range offer {
		if c == codecS2 {
			return codecS2
		}
	}
	return codecNone
}

// Package wire is the memberd relay protocol's frame codec: a pure core that
// does no I/O beyond reading from the io.Reader it is given, starts no
// goroutines and keeps no state between frames.
//
// # Wire format, version 1
//
// Every message is a frame:
//
//	+--------+-----------------+----------------------+
//	| type   | length          | body                 |
//	| 1 byte | 2 bytes, BE     | length bytes         |
//	+--------+-----------------+----------------------+
//
// On a reliable stream (the QUIC control stream, or the TLS-over-TCP
// connection) frames follow each other back to back. In a QUIC DATAGRAM
// exactly one frame is carried; trailing bytes are an error.
//
// The length is checked against the reader's limit (MaxBody at most) before
// any body memory is allocated. Frames of an unknown type are skipped by the
// reader (forward compatibility: a v1 peer ignores what a later version adds).
//
// The first frame a dialer sends on the stream is HELLO; the accepting side
// answers with its own HELLO. A peer whose HELLO carries a version this code
// does not speak is refused (ErrVersion). Member ids are 1..MaxIDLen bytes.
//
// Frame types and bodies (id = idlen:1 byte, then idlen bytes):
//
//	0x01 HELLO      version:1 role:1 [flags:1]       role 1 = member, 2 = relay
//	0x02 PACKET     id payload                       member->relay: id = destination
//	                                                 relay->member: id = source
//	0x03 FORWARD    src-id dst-id payload            relay->relay, one hop only
//	0x04 PING       8 opaque bytes                   answered with PONG, same bytes
//	0x05 PONG       8 opaque bytes
//	0x06 ROUTE_ADD  id                               relay->relay: member attached here
//	0x07 ROUTE_DEL  id                               relay->relay: member gone
//	0x08 GOAWAY     code:1 reason (UTF-8)            why the sender is closing
//	0x09 POLICY     version:8 sum:32 total:4 offset:4 chunk
//	                                                 member->relay: part of a signed policy bundle
//	0x0a PACKET_STREAM  as PACKET, member->relay     keep on the stream at the next hop
//	0x0b FORWARD_STREAM as FORWARD                   keep on the stream at the next hop
//
// PACKET_STREAM and FORWARD_STREAM (added to version 1 without a version
// bump) mark, on a TLS link, a packet that the receiving relay must pass
// on the next hop's QUIC stream, never in a DATAGRAM, whatever its size: a
// burst of resent packets (up to 256 small frames at once), which as
// DATAGRAMs overflowed quic-go's 128-entry DATAGRAM receive queue at the
// receiver. On a QUIC link the stream itself says so. A peer sends them
// only to a relay whose HELLO set HelloStreamTypes (older relays skip
// unknown frame types, which would lose the packet); relays set it in
// their HELLO, as dialler (mesh) and as acceptor, members never do (so
// relays send members PACKET only). Older peers ignore the flags byte.
//
// POLICY (added to version 1 without a version bump: a relay that predates
// it skips the frame) carries a signed governance policy bundle, exact
// bytes, in chunks sent back to back on the reliable stream (never in a
// datagram): version is what the sender says the bundle holds (a hint that
// lets the receiver skip versions it has before receiving anything more;
// it must match the parsed bundle), sum the SHA-256 of the whole bundle,
// total its length (1..MaxPolicySize), offset where the chunk goes (chunks
// come in order, each 1..MaxBody-PolicyHeaderLen bytes). Nobody trusts the
// sender: the relay verifies the bundle against its own current policy.
//
// Payloads (WireGuard ciphertext) are opaque: no code in memberd's relay
// looks inside them.
package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this package speaks.
const Version = 1

// ALPN is the TLS application protocol of memberd's relay protocol v1, on
// both QUIC and TLS over TCP.
const ALPN = "memberd/1"

// Sizes.
const (
	HeaderLen = 3      // type + length
	MaxBody   = 0xffff // the length field is 16 bits
	MaxIDLen  = 32     // longest member or relay id on the wire
)

// Type is a frame type.
type Type uint8

// Frame types.
const (
	TypeHello    Type = 0x01
	TypePacket   Type = 0x02
	TypeForward  Type = 0x03
	TypePing     Type = 0x04
	TypePong     Type = 0x05
	TypeRouteAdd Type = 0x06
	TypeRouteDel Type = 0x07
	TypeGoAway   Type = 0x08
	TypePolicy   Type = 0x09
	// TypePacketStream and TypeForwardStream are PACKET and FORWARD
	// marked to stay on the stream at the next hop (see the package
	// documentation); same bodies.
	TypePacketStream  Type = 0x0a
	TypeForwardStream Type = 0x0b
)

// Known reports whether t is a frame type of this version.
func (t Type) Known() bool { return t >= TypeHello && t <= TypeForwardStream }

// StreamType returns the marked variant of a PACKET or FORWARD frame type
// (see TypePacketStream), and t itself for every other type.
func StreamType(t Type) Type {
	switch t {
	case TypePacket:
		return TypePacketStream
	case TypeForward:
		return TypeForwardStream
	}
	return t
}

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "HELLO"
	case TypePacket:
		return "PACKET"
	case TypeForward:
		return "FORWARD"
	case TypePing:
		return "PING"
	case TypePong:
		return "PONG"
	case TypeRouteAdd:
		return "ROUTE_ADD"
	case TypeRouteDel:
		return "ROUTE_DEL"
	case TypeGoAway:
		return "GOAWAY"
	case TypePolicy:
		return "POLICY"
	case TypePacketStream:
		return "PACKET_STREAM"
	case TypeForwardStream:
		return "FORWARD_STREAM"
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

// Roles in HELLO.
const (
	RoleMember = 1
	RoleRelay  = 2
)

// Errors. Every decoding error wraps ErrMalformed.
var (
	ErrMalformed = errors.New("malformed relay frame")
	ErrTooLarge  = fmt.Errorf("%w: frame larger than the limit", ErrMalformed)
	ErrVersion   = errors.New("unsupported relay protocol version")
)

// Frame is one decoded frame. Body aliases the buffer it was decoded from.
type Frame struct {
	Type Type
	Body []byte
}

// AppendFrame appends a frame of type t whose body is the concatenation of
// parts. It panics if the body exceeds MaxBody (a programming error: callers
// size-check payloads first, see PacketOverhead).
func AppendFrame(dst []byte, t Type, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxBody {
		panic(fmt.Sprintf("wire: %v body of %d bytes exceeds %d", t, n, MaxBody))
	}
	dst = append(dst, byte(t), byte(n>>8), byte(n))
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return dst
}

// ParseDatagram decodes the single frame in a QUIC datagram.
func ParseDatagram(b []byte) (Frame, error) {
	if len(b) < HeaderLen {
		return Frame{}, fmt.Errorf("%w: datagram of %d bytes is shorter than a header", ErrMalformed, len(b))
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	if len(b)-HeaderLen != n {
		return Frame{}, fmt.Errorf("%w: datagram has %d body bytes, header says %d", ErrMalformed, len(b)-HeaderLen, n)
	}
	return Frame{Type: Type(b[0]), Body: b[HeaderLen:]}, nil
}

// Reader reads frames from a stream. It skips frames of unknown types.
type Reader struct {
	// Skipped, when set, is called with the type and body length of every
	// frame of an unknown type the reader skipped (after skipping it).
	Skipped func(t Type, n int)

	r   io.Reader
	max int
	hdr [HeaderLen]byte
	buf []byte
}

// NewReader returns a Reader refusing bodies longer than max (0 or more than
// MaxBody means MaxBody).
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 || max > MaxBody {
		max = MaxBody
	}
	return &Reader{r: r, max: max}
}

// Next returns the next frame of a known type. The body is valid until the
// next call. At a clean end of stream it returns io.EOF; a stream cut inside
// a frame gives io.ErrUnexpectedEOF.
func (r *Reader) Next() (Frame, error) {
	for {
		if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
			return Frame{}, err
		}
		t := Type(r.hdr[0])
		n := int(binary.BigEndian.Uint16(r.hdr[1:3]))
		if n > r.max {
			return Frame{}, fmt.Errorf("%w: %v body of %d bytes, limit %d", ErrTooLarge, t, n, r.max)
		}
		if !t.Known() {
			if _, err := io.CopyN(io.Discard, r.r, int64(n)); err != nil {
				return Frame{}, unexpected(err)
			}
			if r.Skipped != nil {
				r.Skipped(t, n)
			}
			continue
		}
		if cap(r.buf) < n {
			r.buf = make([]byte, n, max(n, 2048))
		}
		b := r.buf[:n]
		if _, err := io.ReadFull(r.r, b); err != nil {
			return Frame{}, unexpected(err)
		}
		return Frame{Type: t, Body: b}, nil
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Hello is the body of a HELLO frame.
type Hello struct {
	Version uint8
	Role    uint8
	// Flags says what the sender understands beyond the first version 1
	// (HelloStreamTypes); an older peer sends none and ignores them.
	Flags uint8
}

// HELLO flags.
const (
	// HelloStreamTypes: the sender forwards PACKET_STREAM and
	// FORWARD_STREAM on the next hop's stream (relays only).
	HelloStreamTypes = 0x01
)

// AppendHello appends a HELLO frame; the flags byte only when one is set,
// so a HELLO without flags is the same bytes as before they existed.
func AppendHello(dst []byte, h Hello) []byte {
	if h.Flags == 0 {
		return AppendFrame(dst, TypeHello, []byte{h.Version, h.Role})
	}
	return AppendFrame(dst, TypeHello, []byte{h.Version, h.Role, h.Flags})
}

// ParseHello decodes a HELLO body. Extra bytes are allowed (later versions
// may add fields); a version other than Version is ErrVersion.
func ParseHello(body []byte) (Hello, error) {
	if len(body) < 2 {
		return Hello{}, fmt.Errorf("%w: HELLO body of %d bytes", ErrMalformed, len(body))
	}
	h := Hello{Version: body[0], Role: body[1]}
	if len(body) > 2 {
		h.Flags = body[2]
	}
	if h.Version != Version {
		return h, fmt.Errorf("%w: peer speaks version %d, this memberd speaks %d: upgrade the older side", ErrVersion, h.Version, Version)
	}
	if h.Role != RoleMember && h.Role != RoleRelay {
		return h, fmt.Errorf("%w: HELLO role %d", ErrMalformed, h.Role)
	}
	return h, nil
}

// ValidID reports whether id can be carried on the wire.
func ValidID(id string) bool { return len(id) >= 1 && len(id) <= MaxIDLen }

// PacketOverhead is the largest number of bytes a PACKET frame adds to its
// payload; FORWARD adds ForwardOverhead.
const (
	PacketOverhead  = HeaderLen + 1 + MaxIDLen
	ForwardOverhead = HeaderLen + 2*(1+MaxIDLen)
)

// AppendPacket appends a PACKET frame. id must satisfy ValidID.
func AppendPacket(dst []byte, id string, payload []byte) []byte {
	n := 1 + len(id) + len(payload)
	if n > MaxBody {
		panic(fmt.Sprintf("wire: PACKET body of %d bytes exceeds %d", n, MaxBody))
	}
	dst = append(dst, byte(TypePacket), byte(n>>8), byte(n), byte(len(id)))
	dst = append(dst, id...)
	return append(dst, payload...)
}

// ParsePacket decodes a PACKET body. The returned slices alias body.
func ParsePacket(body []byte) (id []byte, payload []byte, err error) {
	id, rest, err := cutID(body)
	if err != nil {
		return nil, nil, fmt.Errorf("PACKET: %w", err)
	}
	return id, rest, nil
}

// AppendForward appends a FORWARD frame. Both ids must satisfy ValidID.
func AppendForward(dst []byte, src, to string, payload []byte) []byte {
	n := 2 + len(src) + len(to) + len(payload)
	if n > MaxBody {
		panic(fmt.Sprintf("wire: FORWARD body of %d bytes exceeds %d", n, MaxBody))
	}
	dst = append(dst, byte(TypeForward), byte(n>>8), byte(n), byte(len(src)))
	dst = append(dst, src...)
	dst = append(dst, byte(len(to)))
	dst = append(dst, to...)
	return append(dst, payload...)
}

// ParseForward decodes a FORWARD body. The returned slices alias body.
func ParseForward(body []byte) (src, to, payload []byte, err error) {
	src, rest, err := cutID(body)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("FORWARD source: %w", err)
	}
	to, rest, err = cutID(rest)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("FORWARD destination: %w", err)
	}
	return src, to, rest, nil
}

// AppendID appends a frame whose body is just an id (ROUTE_ADD, ROUTE_DEL).
func AppendID(dst []byte, t Type, id string) []byte {
	return AppendFrame(dst, t, []byte{byte(len(id))}, []byte(id))
}

// ParseID decodes a ROUTE_ADD or ROUTE_DEL body.
func ParseID(body []byte) ([]byte, error) {
	id, rest, err := cutID(body)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the id", ErrMalformed, len(rest))
	}
	return id, nil
}

// GoAway codes.
const (
	GoAwayShutdown   = 1 // the relay is stopping
	GoAwayNotAllowed = 2 // the policy no longer admits this peer
	GoAwayProtocol   = 3 // protocol violation
)

// AppendGoAway appends a GOAWAY frame; the reason is cut to fit.
func AppendGoAway(dst []byte, code uint8, reason string) []byte {
	if len(reason) > 512 {
		reason = reason[:512]
	}
	return AppendFrame(dst, TypeGoAway, []byte{code}, []byte(reason))
}

// ParseGoAway decodes a GOAWAY body.
func ParseGoAway(body []byte) (code uint8, reason string, err error) {
	if len(body) < 1 {
		return 0, "", fmt.Errorf("%w: empty GOAWAY", ErrMalformed)
	}
	return body[0], string(body[1:]), nil
}

func cutID(b []byte) (id, rest []byte, err error) {
	if len(b) < 1 {
		return nil, nil, fmt.Errorf("%w: missing id length", ErrMalformed)
	}
	n := int(b[0])
	if n == 0 || n > MaxIDLen {
		return nil, nil, fmt.Errorf("%w: id length %d not in 1..%d", ErrMalformed, n, MaxIDLen)
	}
	if len(b) < 1+n {
		return nil, nil, fmt.Errorf("%w: id of %d bytes truncated", ErrMalformed, n)
	}
	return b[1 : 1+n], b[1+n:], nil
}

// Policy bundle transfer (POLICY frames).
const (
	// MaxPolicySize is the largest bundle a POLICY transfer may announce
	// (the policy package's MaxBundleSize).
	MaxPolicySize = 4 << 20
	// PolicyHeaderLen is the size of a POLICY body before the chunk.
	PolicyHeaderLen = 8 + 32 + 4 + 4
	// PolicyChunk is the chunk size PolicyFrames uses: small enough not to
	// hold up packets behind it on a TCP path for long.
	PolicyChunk = 16 << 10
)

// PolicyPart is one decoded POLICY body.
type PolicyPart struct {
	Version       uint64
	Sum           [32]byte // SHA-256 of the whole bundle
	Total, Offset int
	Chunk         []byte // aliases the body
}

// PolicyFrames encodes bundle (announced as version) as POLICY frames of
// at most PolicyChunk bytes of bundle each. bundle must be 1..MaxPolicySize
// bytes.
func PolicyFrames(version uint64, bundle []byte) ([][]byte, error) {
	if len(bundle) == 0 || len(bundle) > MaxPolicySize {
		return nil, fmt.Errorf("%w: policy bundle of %d bytes, allowed 1..%d", ErrTooLarge, len(bundle), MaxPolicySize)
	}
	sum := sha256.Sum256(bundle)
	var hdr [PolicyHeaderLen]byte
	binary.BigEndian.PutUint64(hdr[0:8], version)
	copy(hdr[8:40], sum[:])
	binary.BigEndian.PutUint32(hdr[40:44], uint32(len(bundle)))
	var out [][]byte
	for off := 0; off < len(bundle); off += PolicyChunk {
		end := min(off+PolicyChunk, len(bundle))
		binary.BigEndian.PutUint32(hdr[44:48], uint32(off))
		out = append(out, AppendFrame(make([]byte, 0, HeaderLen+PolicyHeaderLen+end-off), TypePolicy, hdr[:], bundle[off:end]))
	}
	return out, nil
}

// ParsePolicy decodes a POLICY body. The chunk aliases body.
func ParsePolicy(body []byte) (PolicyPart, error) {
	if len(body) < PolicyHeaderLen+1 {
		return PolicyPart{}, fmt.Errorf("%w: POLICY body of %d bytes", ErrMalformed, len(body))
	}
	p := PolicyPart{Version: binary.BigEndian.Uint64(body[0:8])}
	copy(p.Sum[:], body[8:40])
	total := binary.BigEndian.Uint32(body[40:44])
	off := binary.BigEndian.Uint32(body[44:48])
	p.Chunk = body[PolicyHeaderLen:]
	if total == 0 || total > MaxPolicySize {
		return PolicyPart{}, fmt.Errorf("%w: POLICY bundle of %d bytes, allowed 1..%d", ErrTooLarge, total, MaxPolicySize)
	}
	if uint64(off)+uint64(len(p.Chunk)) > uint64(total) {
		return PolicyPart{}, fmt.Errorf("%w: POLICY chunk %d+%d beyond the bundle's %d bytes", ErrMalformed, off, len(p.Chunk), total)
	}
	p.Total, p.Offset = int(total), int(off)
	return p, nil
}

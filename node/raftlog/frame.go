package raftlog

// Wire format between consenters. Pure code: no I/O beyond the io.Reader it
// is given.
//
// A connection carries frames in one direction (dialer -> listener) after a
// handshake in which each side sends one frame:
//
//	offset  size  field
//	0       1     version (frameVersion = 1); any other value: close the connection
//	1       1     type
//	2       4     length n of the payload, big endian; n <= the receiver's limit,
//	              checked before anything is allocated
//	6       n     payload
//
// Types:
//
//	1 hello   from(8) to(8) clusterLen(1) cluster: the dialer names itself, the
//	          node it wants and the cluster; the listener answers with a hello
//	          naming itself, or a reject.
//	2 reject  UTF-8 reason for the operator; the connection is then closed.
//	3 msg     one raftpb.Message (protobuf); its From must be the handshake's
//	          sender and its To the receiver.
//	4 addr    UTF-8 address (at most 1024 bytes) at which the dialer accepts
//	          raft connections, sent right after the handshake: a joining
//	          node that does not know the dialer yet can then answer it.
//	          Older listeners skip it.
//	5 lane    one byte: 0 bulk (appends, snapshots), 1 priority (all other
//	          messages). Sent by the dialer first after the handshake; the
//	          listener keeps one connection per peer and lane, and learns
//	          that the peer speaks lanes. Without it a connection is bulk.
//	          Older listeners skip it (transport.go: a node dials the
//	          priority lane only to peers that sent one).
//	6 codecs  codec IDs, one byte each (codec.go: 1 = S2). From the dialer,
//	          after its lane and addr frames: the codecs it compresses
//	          with. From the listener, in answer (the only frame a listener
//	          sends after the handshake): the one codec it chose, or none.
//	          Older listeners skip it and answer nothing: no compression.
//	7 zmsg    codec(1), then one raftpb.Message compressed with it; only in
//	          the codec the listener chose on this connection; what it
//	          decompresses to obeys the msg rules and the frame limit.
//
// Unknown types are skipped (read and discarded), so later versions can add
// frame types without breaking old peers.

import (
	"encoding/binary"
	"fmt"
	"io"
)

const (
	frameVersion   = 1
	frameHeaderLen = 6
)

const (
	frameHello  byte = 1
	frameReject byte = 2
	frameMsg    byte = 3
	frameAddr   byte = 4
	frameLane   byte = 5
	frameCodecs byte = 6
	frameZMsg   byte = 7
)

func appendFrameHeader(dst []byte, typ byte, n int) []byte {
	dst = append(dst, frameVersion, typ)
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// patchFrameLen sets the length of the frame that starts at dst[start:]
// and ends at the end of dst.
func patchFrameLen(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start+2:], uint32(len(dst)-start-frameHeaderLen))
	return dst
}

func appendFrame(dst []byte, typ byte, payload []byte) []byte {
	return append(appendFrameHeader(dst, typ, len(payload)), payload...)
}

// frameReader reads frames, reusing one buffer (payloads are valid until
// the next call).
type frameReader struct {
	r   io.Reader
	max int
	hdr [frameHeaderLen]byte
	buf []byte
}

// next returns the next frame. Errors: io.EOF at a clean end,
// io.ErrUnexpectedEOF inside a frame, ErrProtocol, ErrTooLarge.
func (fr *frameReader) next() (byte, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	if fr.hdr[0] != frameVersion {
		return 0, nil, fmt.Errorf("%w: frame version %d, this node speaks %d", ErrProtocol, fr.hdr[0], frameVersion)
	}
	n := binary.BigEndian.Uint32(fr.hdr[2:])
	if uint64(n) > uint64(fr.max) {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes, limit %d", ErrTooLarge, n, fr.max)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	b := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	if cap(fr.buf) > 1<<20 && n < 64<<10 {
		fr.buf = nil // drop a buffer grown by one large frame
	}
	return fr.hdr[1], b, nil
}

// maxAddrLen bounds a peer address (addr frames, AddPeer).
const maxAddrLen = 1024

type hello struct {
	From, To uint64
	Cluster  string
}

func (h hello) marshal() []byte {
	b := make([]byte, 0, 17+len(h.Cluster))
	b = binary.BigEndian.AppendUint64(b, h.From)
	b = binary.BigEndian.AppendUint64(b, h.To)
	b = append(b, byte(len(h.Cluster)))
	return append(b, h.Cluster...)
}

func parseHello(b []byte) (hello, error) {
	if len(b) < 17 || len(b) != 17+int(b[16]) {
		return hello{}, fmt.Errorf("%w: malformed hello (%d bytes)", ErrProtocol, len(b))
	}
	return hello{
		From:    binary.BigEndian.Uint64(b[0:8]),
		To:      binary.BigEndian.Uint64(b[8:16]),
		Cluster: string(b[17:]),
	}, nil
}

// maxHelloLen bounds a hello payload: two IDs, the length byte and at most
// 255 bytes of cluster name.
const maxHelloLen = 17 + 255

// ReadHello reads the first frame of an inbound connection, the dialer's
// hello, without answering it: it returns the cluster the dialer asks for
// and the exact bytes read, which the caller replays in front of the rest
// of the connection before handing it to that cluster's Node. One port can
// so serve the raft clusters of several channels (the appliance routes by
// cluster); dialers send the same hello as always, so this needs nothing of
// them. Errors wrap ErrProtocol (not a hello), ErrTooLarge or the read's.
func ReadHello(r io.Reader) (cluster string, raw []byte, err error) {
	fr := frameReader{r: r, max: maxHelloLen}
	typ, b, err := fr.next()
	if err != nil {
		return "", nil, err
	}
	if typ != frameHello {
		return "", nil, fmt.Errorf("%w: first frame has type %d, want hello", ErrProtocol, typ)
	}
	h, err := parseHello(b)
	if err != nil {
		return "", nil, err
	}
	return h.Cluster, append(fr.hdr[:], b...), nil
}

// WriteReject writes a handshake reject frame with reason, which the
// dialer logs (ErrHandshake), to a connection about to be closed in place
// of the hello answer; for a caller that routes connections by ReadHello
// and has no node for the cluster named.
func WriteReject(w io.Writer, reason string) error {
	_, err := w.Write(appendFrame(nil, frameReject, []byte(reason)))
	return err
}

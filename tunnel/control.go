package tunnel

// Control packets travel over the PacketTransport beside WireGuard messages.
//
// WireGuard messages start with their type as a little-endian uint32 in 1..4
// (bytes 01..04 00 00 00). Control packets start with the 4-byte prefix
// FF 'M' 'D' 01 (a little-endian uint32 of 0x01444DFF, never a WireGuard type;
// the last byte is the control protocol version), so one byte comparison per
// packet tells them apart and wireguard-go never sees them.
//
// Wire format, version 1:
//
//	size  field
//	4     prefix FF 4D 44 01
//	1     kind: 1 announce, 2 ack; unknown kinds are ignored
//	1     flags: announce bit0 = active (the sender uses this key now),
//	                       bit1 = request (please announce yours to me),
//	                       bit2 = have-yours (the sender holds your active key)
//	       announce (next key) and ack bit3 = defer (the sender switches
//	                       keys only after you did; see core.rotatingBefore)
//	4     message id, big-endian (fragments of one message share it)
//	1     fragment index (0-based)
//	1     fragment count (1..16)
//	...   payload fragment
//
// Announce payload: an attestation (see attestation.go), fragmented to fit
// the transport's MaxPacketSize. Ack payload: the 32-byte WireGuard public
// key being acknowledged (single fragment). Reassembly is bounded in
// fragments, bytes, messages in flight and time.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/memberd/memberd/tunnel/internal/core"
)

const (
	controlHeaderLen = 12
	maxFragments     = 16
	maxControlMsg    = MaxAttestationSize
	maxPartials      = 64
	partialTimeout   = 5 * time.Second
)

// controlPrefix marks a control packet.
var controlPrefix = [4]byte{0xFF, 'M', 'D', 0x01}

type controlKind uint8

const (
	kindAnnounce controlKind = core.KindAnnounce
	kindAck      controlKind = core.KindAck
)

const (
	flagActive    = core.FlagActive
	flagRequest   = core.FlagRequest
	flagHaveYours = core.FlagHaveYours
	// flagDefer, on an ack or a next-key announcement: the sender is
	// rotating too, has not switched, and will switch only after the
	// receiver (a smaller member id) did (see core.rotatingBefore).
	flagDefer = core.FlagDefer
)

var errBadControl = errors.New("malformed tunnel control packet")

type controlHeader struct {
	kind         controlKind
	flags        uint8
	id           uint32
	index, count uint8
}

// isControl reports whether pkt is a control packet (as opposed to WireGuard).
func isControl(pkt []byte) bool {
	return len(pkt) >= 4 && pkt[0] == controlPrefix[0] && pkt[1] == controlPrefix[1] && pkt[2] == controlPrefix[2] && pkt[3] == controlPrefix[3]
}

// parseControl splits a control packet into header and payload fragment.
func parseControl(pkt []byte) (controlHeader, []byte, error) {
	if len(pkt) < controlHeaderLen || !isControl(pkt) {
		return controlHeader{}, nil, fmt.Errorf("%w: %d bytes", errBadControl, len(pkt))
	}
	h := controlHeader{
		kind:  controlKind(pkt[4]),
		flags: pkt[5],
		id:    binary.BigEndian.Uint32(pkt[6:10]),
		index: pkt[10],
		count: pkt[11],
	}
	if h.count == 0 || h.count > maxFragments || h.index >= h.count {
		return controlHeader{}, nil, fmt.Errorf("%w: fragment %d of %d", errBadControl, h.index, h.count)
	}
	return h, pkt[controlHeaderLen:], nil
}

// encodeControl splits payload into control packets of at most maxPacket bytes.
func encodeControl(kind controlKind, flags uint8, id uint32, payload []byte, maxPacket int) ([][]byte, error) {
	room := maxPacket - controlHeaderLen
	if room < 64 {
		return nil, fmt.Errorf("%w: transport packet limit %d too small", errBadControl, maxPacket)
	}
	n := (len(payload) + room - 1) / room
	if n == 0 {
		n = 1
	}
	if n > maxFragments {
		return nil, fmt.Errorf("%w: %d-byte message needs %d fragments, limit %d", errBadControl, len(payload), n, maxFragments)
	}
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		end := min((i+1)*room, len(payload))
		p := make([]byte, 0, controlHeaderLen+end-i*room)
		p = append(p, controlPrefix[:]...)
		p = append(p, byte(kind), flags)
		p = binary.BigEndian.AppendUint32(p, id)
		p = append(p, byte(i), byte(n))
		p = append(p, payload[i*room:end]...)
		out = append(out, p)
	}
	return out, nil
}

type partialKey struct {
	sender string
	id     uint32
}

type partial struct {
	h       controlHeader
	frags   [maxFragments][]byte
	have    int
	size    int
	started time.Time
}

// reassembler rebuilds fragmented control messages. It is a pure core: no
// goroutines, time passed in. Not safe for concurrent use.
type reassembler struct {
	partials map[partialKey]*partial
}

// add takes one control packet from sender and returns the whole message
// once all its fragments arrived.
func (r *reassembler) add(sender string, pkt []byte, now time.Time) (controlHeader, []byte, bool, error) {
	h, frag, err := parseControl(pkt)
	if err != nil {
		return h, nil, false, err
	}
	if h.count == 1 {
		return h, frag, true, nil
	}
	if r.partials == nil {
		r.partials = map[partialKey]*partial{}
	}
	r.expire(now)
	k := partialKey{sender, h.id}
	p := r.partials[k]
	if p == nil {
		if len(r.partials) >= maxPartials {
			r.evictOldest()
		}
		p = &partial{h: h, started: now}
		r.partials[k] = p
	}
	if p.h.count != h.count || p.h.kind != h.kind || p.h.flags != h.flags {
		delete(r.partials, k)
		return h, nil, false, fmt.Errorf("%w: inconsistent fragments of message %d from %s", errBadControl, h.id, sender)
	}
	if p.frags[h.index] != nil {
		return h, nil, false, nil // duplicate
	}
	if p.size+len(frag) > maxControlMsg {
		delete(r.partials, k)
		return h, nil, false, fmt.Errorf("%w: message %d from %s exceeds %d bytes", errBadControl, h.id, sender, maxControlMsg)
	}
	p.frags[h.index] = append([]byte(nil), frag...)
	p.have++
	p.size += len(frag)
	if p.have < int(h.count) {
		return h, nil, false, nil
	}
	delete(r.partials, k)
	msg := make([]byte, 0, p.size)
	for i := 0; i < int(h.count); i++ {
		msg = append(msg, p.frags[i]...)
	}
	return p.h, msg, true, nil
}

func (r *reassembler) expire(now time.Time) {
	for k, p := range r.partials {
		if now.Sub(p.started) > partialTimeout {
			delete(r.partials, k)
		}
	}
}

func (r *reassembler) evictOldest() {
	var oldest partialKey
	var t time.Time
	first := true
	for k, p := range r.partials {
		if first || p.started.Before(t) {
			oldest, t, first = k, p.started, false
		}
	}
	delete(r.partials, oldest)
}

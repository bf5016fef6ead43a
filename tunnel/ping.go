package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// ErrPingReply: what came back to an echo request was not its reply.
var ErrPingReply = errors.New("unexpected answer to a tunnel ping")

// pingPayload is the echo data: 8 random bytes, checked in the reply.
const pingPayload = 8

// Ping sends one ICMP echo request to member's overlay address through the
// tunnel and waits for its reply until ctx ends. The time returned is the
// round trip of a packet through WireGuard and the relay path, both ways.
//
// The member's netstack answers echo requests itself, so no port and no
// ACL entry is involved: a ping shows that the two members' keys are
// exchanged and packets flow, not that the ACL lets a service through.
// Like Dial, Ping first waits (until ctx ends) for the member's key and a
// first handshake; that wait is not in the round trip.
func (d *Device) Ping(ctx context.Context, member string) (time.Duration, error) {
	if member == d.cfg.Member {
		return 0, fmt.Errorf("%w: %s is this appliance", ErrDenied, member)
	}
	addr, err := d.waitPeer(ctx, member)
	if err != nil {
		return 0, err
	}
	pc, err := d.tnet.DialPingAddr(netip.Addr{}, addr)
	if err != nil {
		return 0, fmt.Errorf("ping %s (%s): %w", member, addr, err)
	}
	defer pc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = pc.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = pc.SetReadDeadline(time.Now()) })
	defer stop()

	req := make([]byte, 8+pingPayload)
	req[0] = 8 // ICMPv4 echo request
	if addr.Is6() {
		req[0] = 128 // ICMPv6 echo request
	}
	var seq [2]byte
	_, _ = rand.Read(seq[:])
	copy(req[6:8], seq[:])
	_, _ = rand.Read(req[8:])
	start := time.Now()
	if _, err := pc.Write(req); err != nil {
		return 0, fmt.Errorf("ping %s (%s): %w", member, addr, err)
	}
	buf := make([]byte, 1500)
	for {
		n, err := pc.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("ping %s (%s): no reply: %w", member, addr, ctx.Err())
			}
			return 0, fmt.Errorf("ping %s (%s): %w", member, addr, err)
		}
		rtt := time.Since(start)
		if ok, err := isEchoReply(buf[:n], req, addr.Is6()); err != nil {
			return 0, fmt.Errorf("ping %s (%s): %w", member, addr, err)
		} else if ok {
			return rtt, nil
		}
	}
}

// isEchoReply reports whether msg is the echo reply to req; an echo reply
// to another request (an earlier timed-out one) is skipped, anything else
// is an error.
func isEchoReply(msg, req []byte, v6 bool) (bool, error) {
	reply := byte(0)
	if v6 {
		reply = 129
	}
	if len(msg) < 8 || msg[0] != reply {
		return false, fmt.Errorf("%w: %d bytes, ICMP type %d", ErrPingReply, len(msg), firstByte(msg))
	}
	if binary.BigEndian.Uint16(msg[6:8]) != binary.BigEndian.Uint16(req[6:8]) || string(msg[8:]) != string(req[8:]) {
		return false, nil
	}
	return true, nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
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
	if err := d.waitUp(ctx); err != nil {
		return 0, err
	}
	addr, err := d.waitPeer(ctx, member)
	if err != nil {
		return 0, err
	}
	rtt, err := d.echo(ctx, addr)
	if err != nil {
		return 0, fmt.Errorf("ping %s (%s): %w", member, addr, err)
	}
	return rtt, nil
}

// echo sends one echo request to addr from a gVisor ICMP endpoint of the
// tunnel's stack and waits for its reply. The endpoint is used directly,
// not through wireguard-go's PingConn: that one starts waiting for
// readability after the reply may have arrived, and then misses it.
func (d *Device) echo(ctx context.Context, addr netip.Addr) (time.Duration, error) {
	s, err := netstackOf(d.io.tnet)
	if err != nil {
		return 0, err
	}
	tn, pn, reqType := icmp.ProtocolNumber4, ipv4.ProtocolNumber, byte(8) // ICMPv4 echo request
	if addr.Is6() {
		tn, pn, reqType = icmp.ProtocolNumber6, ipv6.ProtocolNumber, 128
	}
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(tn, pn, &wq)
	if terr != nil {
		return 0, fmt.Errorf("ICMP endpoint: %s", terr)
	}
	defer ep.Close()
	// Registered before the request leaves, so that no reply goes unseen.
	we, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	if terr := ep.Connect(tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(addr.AsSlice())}); terr != nil {
		return 0, fmt.Errorf("ICMP connect: %s", terr)
	}

	req := make([]byte, 8+pingPayload)
	req[0] = reqType
	_, _ = rand.Read(req[6:8]) // sequence; the endpoint sets the identifier
	_, _ = rand.Read(req[8:])
	start := time.Now()
	if _, terr := ep.Write(bytes.NewReader(req), tcpip.WriteOptions{}); terr != nil {
		return 0, fmt.Errorf("ICMP write: %s", terr)
	}
	buf := make([]byte, 1500)
	for {
		w := tcpip.SliceWriter(buf)
		res, terr := ep.Read(&w, tcpip.ReadOptions{})
		if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
			select {
			case <-readable:
				continue
			case <-ctx.Done():
				return 0, fmt.Errorf("no reply: %w", ctx.Err())
			case <-d.run.done:
				return 0, ErrClosed
			}
		}
		if terr != nil {
			return 0, fmt.Errorf("ICMP read: %s", terr)
		}
		rtt := time.Since(start)
		if ok, err := isEchoReply(buf[:res.Count], req, addr.Is6()); err != nil {
			return 0, err
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

package tunnel

import (
	"net"
)

// AnnouncePackets encodes an attestation announcement as a peer would send
// it, for tests that play a misbehaving member.
func AnnouncePackets(att []byte, active bool, maxPacket int) [][]byte {
	var f uint8
	if active {
		f = flagActive
	}
	p, err := encodeControl(kindAnnounce, f, 1, att, maxPacket)
	if err != nil {
		panic(err)
	}
	return p
}

// IpcGet dumps the WireGuard device state, for debugging tests.
func (d *Device) IpcGet() string {
	s, _ := d.io.wg.IpcGet()
	return s
}

// ParseHandshakeTimes exposes the UAPI handshake-time parser to tests.
var ParseHandshakeTimes = parseHandshakeTimes

// RequestPackets encodes an active announcement with the request flag (the
// sender asks for our attestation), for tests that play a flooding member.
func RequestPackets(att []byte, maxPacket int) [][]byte {
	p, err := encodeControl(kindAnnounce, flagActive|flagRequest, 1, att, maxPacket)
	if err != nil {
		panic(err)
	}
	return p
}

// IsAnnounceStart reports whether pkt is the first fragment of an
// attestation announcement, for tests that count answers on the wire.
func IsAnnounceStart(pkt []byte) bool {
	h, _, err := parseControl(pkt)
	return err == nil && h.kind == kindAnnounce && h.index == 0
}

// NetCounters reads the IP packets netstack sent and received and the
// TCP retransmission timeouts it had. The gVisor stack is unexported in
// wireguard-go's netstack, so it is reached by reflection (tests only).
func (d *Device) NetCounters() (ipSent, ipReceived, rtoTimeouts uint64) {
	st, err := netstackOf(d.io.tnet)
	if err != nil {
		panic(err)
	}
	s := st.Stats()
	return s.IP.PacketsSent.Value(), s.IP.PacketsReceived.Value(), s.TCP.Timeouts.Value()
}

// TCPRecovery reads netstack's TCP loss-recovery setting (0: SACK, no RACK)
// through the same reflection New uses, so a wireguard-go whose layout
// defeats useSACKRecovery fails the caller with errNoStack instead of a
// panic in a second copy of the reflection.
func (d *Device) TCPRecovery() (int, error) {
	return tcpRecoveryOf(d.io.tnet)
}

// ListenerOn makes a Listener that accepts from ln for overlay port, so a
// test can hand it connections in states a peer cannot be made to produce
// on cue (e.g. reset before Accept).
func (d *Device) ListenerOn(ln net.Listener, port uint16) *Listener {
	return &Listener{ln: ln, d: d, port: port}
}

// Survive runs fn as a goroutine serving one connection does, under
// survive, so a test can check what a panic there leads to.
func (d *Device) Survive(fn, closeConn func()) {
	defer d.survive("test connection", closeConn)
	fn()
}

package tunnel

// PacketTransport carries opaque packets (WireGuard ciphertext) between members,
// addressed by member id. Unreliable like UDP: it may drop, never blocks long.
//
// This is the seam between relay (producer: relay.Client implements it
// structurally) and tunnel (consumer). tunneltest.Network provides an
// in-memory pair for tests.
//
// A Device owns the transport it is given: Device.Close closes it.
type PacketTransport interface {
	// WritePacket sends pkt to member. It must not retain pkt after returning.
	WritePacket(pkt []byte, member string) error
	// ReadPacket blocks until a packet arrives, copies it into buf and returns
	// its length and sender. After Close it returns net.ErrClosed.
	ReadPacket(buf []byte) (n int, member string, err error)
	// MaxPacketSize is the largest pkt WritePacket accepts on the current path
	// (QUIC datagram limit; larger on TCP) — the tunnel picks its MTU from it.
	MaxPacketSize() int
	Close() error
}

package relay_test

import (
	"net"
	"testing"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/relay"
)

// packetTransport is a copy of tunnel.PacketTransport (the consumer owns
// it; relay must not import tunnel). The assertion keeps Client on the seam.
type packetTransport interface {
	WritePacket(pkt []byte, member string) error
	ReadPacket(buf []byte) (n int, member string, err error)
	MaxPacketSize() int
	Close() error
}

var _ packetTransport = (*relay.Client)(nil)

var _ relay.Authority = (*relay.StaticAuthority)(nil)

func TestClosedClientReturnsErrClosed(t *testing.T) {
	c, err := relay.NewClient(relay.ClientConfig{
		Identity:   testpki.SelfSigned(t, "client").TLS(),
		Relays:     []relay.RelayInfo{{ID: "r", Addr: "127.0.0.1:9", Pin: "sha256/AAAA"}},
		NoEnvProxy: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close() // idempotent
	if _, _, err := c.ReadPacket(make([]byte, 10)); err != net.ErrClosed {
		t.Fatalf("ReadPacket after Close: %v", err)
	}
	if err := c.WritePacket([]byte("x"), "m"); err != net.ErrClosed {
		t.Fatalf("WritePacket after Close: %v", err)
	}
}

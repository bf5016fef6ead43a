package tunnel

import (
	"fmt"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/tun/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// tcpRecoveryOf reads the TCP loss-recovery option of tnet's gVisor stack.
func tcpRecoveryOf(tnet *netstack.Net) (int, error) {
	s, err := netstackOf(tnet)
	if err != nil {
		return 0, err
	}
	var opt tcpip.TCPRecovery
	if err := s.TransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		return 0, fmt.Errorf("read gVisor TCP recovery: %s", err)
	}
	return int(opt), nil
}

// TestUseSACKRecoveryTurnsRACKOff runs useSACKRecovery on a fresh
// wireguard-go netstack, as New does. It fails when New would take the
// fallback (log a warning, keep RACK): when the reflection no longer finds
// the gVisor stack, when gVisor refuses the option, or when the option
// reads back as anything but 0. It also fails if gVisor's default is
// already 0, in which case the switch (and this test) proves nothing and
// tcp_recovery.go can go.
func TestUseSACKRecoveryTurnsRACKOff(t *testing.T) {
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr("10.99.0.1")}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	defer tdev.Close() // stops the stack's goroutines
	before, err := tcpRecoveryOf(tnet)
	if err != nil {
		t.Fatalf("the reflection in tcp_recovery.go is broken (a newer wireguard-go?): %v", err)
	}
	if before == 0 {
		t.Fatalf("gVisor's default TCP recovery is already 0 (no RACK): useSACKRecovery is moot")
	}
	if err := useSACKRecovery(tnet); err != nil {
		t.Fatalf("useSACKRecovery: %v (New would fall back to RACK)", err)
	}
	after, err := tcpRecoveryOf(tnet)
	if err != nil {
		t.Fatal(err)
	}
	if after != 0 {
		t.Fatalf("TCP recovery after useSACKRecovery = %#x, want 0 (SACK only); default was %#x", after, before)
	}
}

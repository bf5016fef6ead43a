package loopport

import (
	"net"
	"strconv"
	"testing"
)

// TestFreeIsBelowEphemeralAndBindable: every port handed out is distinct,
// inside Range, and bindable for TCP and UDP right after.
func TestFreeIsBelowEphemeralAndBindable(t *testing.T) {
	lo, hi := Range()
	if lo >= hi || lo < 10000 {
		t.Fatalf("range %d-%d", lo, hi)
	}
	seen := map[string]bool{}
	for range 50 {
		a, err := Free()
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
		_, ps, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(ps)
		if p < lo || p >= hi {
			t.Fatalf("%s outside %d-%d", a, lo, hi)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("tcp %s: %v", a, err)
		}
		u, err := net.ListenPacket("udp", a)
		if err != nil {
			t.Fatalf("udp %s: %v", a, err)
		}
		l.Close()
		u.Close()
	}
}

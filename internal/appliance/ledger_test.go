package appliance

import (
	"net"
	"slices"
	"testing"

	"github.com/memberd/memberd/tunnel"
)

func TestSplitMemberPort(t *testing.T) {
	for _, tc := range []struct {
		in     string
		member string
		port   uint16
		ok     bool
	}{
		{"member-b:7052", "member-b", 7052, true},
		{"m:1", "m", 1, true},
		{"member-b", "", 0, false},
		{":7052", "", 0, false},
		{"m:0", "", 0, false},
		{"m:65536", "", 0, false},
		{"m:x", "", 0, false},
	} {
		m, p, err := splitMemberPort(tc.in)
		if (err == nil) != tc.ok || m != tc.member || p != tc.port {
			t.Errorf("splitMemberPort(%q) = %q, %d, %v", tc.in, m, p, err)
		}
	}
}

func FuzzSplitMemberPort(f *testing.F) {
	for _, s := range []string{"member-b:7052", "[::1]:1", "m:", ":1", "a:b:c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, p, err := splitMemberPort(s)
		if err != nil {
			return
		}
		if m == "" || p == 0 {
			t.Fatalf("accepted %q as %q:%d", s, m, p)
		}
	})
}

func TestPeerWatchRestarted(t *testing.T) {
	k := func(b byte) tunnel.Key { var k tunnel.Key; k[0] = b; return k }
	ps := func(m string, active, pending tunnel.Key) tunnel.PeerStatus {
		return tunnel.PeerStatus{Member: m, PublicKey: active, PendingKey: pending}
	}
	w := &peerWatch{}
	for i, step := range []struct {
		peers []tunnel.PeerStatus
		want  []string
	}{
		{[]tunnel.PeerStatus{ps("a", k(1), tunnel.Key{}), ps("b", k(2), tunnel.Key{})}, nil},           // first sight
		{[]tunnel.PeerStatus{ps("a", k(1), k(3)), ps("b", k(2), tunnel.Key{})}, nil},                   // a announces a rotation
		{[]tunnel.PeerStatus{ps("a", k(3), tunnel.Key{}), ps("b", k(2), tunnel.Key{})}, nil},           // a rotated as announced
		{[]tunnel.PeerStatus{ps("a", k(3), tunnel.Key{}), ps("b", k(9), tunnel.Key{})}, []string{"b"}}, // b restarted
		{[]tunnel.PeerStatus{ps("b", k(9), tunnel.Key{})}, nil},                                        // a gone
		{[]tunnel.PeerStatus{ps("a", k(7), tunnel.Key{}), ps("b", k(9), tunnel.Key{})}, []string{"a"}}, // a back, new key
	} {
		if got := w.restarted(step.peers); !slices.Equal(got, step.want) {
			t.Fatalf("step %d: restarted %v, want %v", i, got, step.want)
		}
	}
	// Connections to a restarted member are closed and forgotten.
	c1, c2 := net.Pipe()
	defer c2.Close()
	tc := w.track("b", c1)
	if n := w.closeMember("b"); n != 1 {
		t.Fatalf("closed %d connections", n)
	}
	if _, err := tc.Write([]byte("x")); err == nil {
		t.Fatal("write on a closed connection succeeded")
	}
	if n := w.closeMember("b"); n != 0 || tc.Close() != nil {
		t.Fatalf("closed %d again", n)
	}
}

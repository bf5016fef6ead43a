package tunnel_test

import (
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
)

func TestParseHandshakeTimes(t *testing.T) {
	k1, k2, k3 := tunnel.Key{1}, tunnel.Key{2}, tunnel.Key{3}
	dump := "private_key=" + tunnel.Key{9}.String() + "\n" +
		"public_key=" + k1.String() + "\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n" +
		"public_key=" + k2.String() + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n" +
		"public_key=" + k3.String() + "\nlast_handshake_time_nsec=7\nlast_handshake_time_sec=1700000001\n" +
		"public_key=zz\nlast_handshake_time_sec=5\nerrno=0\n"
	got := tunnel.ParseHandshakeTimes(dump)
	want := map[tunnel.Key]time.Time{k1: time.Unix(1700000000, 5), k3: time.Unix(1700000001, 7)}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, w := range want {
		if !got[k].Equal(w) {
			t.Fatalf("%s: got %v, want %v", k, got[k], w)
		}
	}
}

func FuzzParseHandshakeTimes(f *testing.F) {
	f.Add("public_key=" + strings.Repeat("01", 32) + "\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=2\n")
	f.Add("public_key=\nlast_handshake_time_sec=-1\n")
	f.Add("=\n==\nlast_handshake_time_sec=99999999999999999999\n")
	f.Fuzz(func(t *testing.T, s string) {
		for k, v := range tunnel.ParseHandshakeTimes(s) {
			if k.IsZero() || v.Equal(time.Unix(0, 0)) {
				t.Fatalf("entry for a zero key or a peer without handshake: %v %v", k, v)
			}
		}
	})
}

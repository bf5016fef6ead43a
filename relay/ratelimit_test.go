package relay

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/memberd/memberd/relay/wire"
)

func TestBucketWait(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := newBucket(1000, 1500, t0)
	if w := b.wait(1500, t0); w != 0 {
		t.Fatalf("full bucket: wait %v, want 0", w)
	}
	if !b.allow(1500, t0) {
		t.Fatal("burst refused")
	}
	w := b.wait(500, t0)
	if w < 500*time.Millisecond || w > 501*time.Millisecond {
		t.Fatalf("500 bytes at 1000/s from empty: wait %v, want 500ms", w)
	}
	if b.wait(500, t0) != w {
		t.Fatal("wait took bytes from the bucket")
	}
	if !b.allow(500, t0.Add(w)) {
		t.Fatal("the bytes are not there after the wait")
	}
	if b.wait(1501, t0) != -1 {
		t.Fatal("more than the burst must never fit")
	}
	if newBucket(0, 0, t0).wait(1<<30, t0) != 0 {
		t.Fatal("rate 0 must mean unlimited")
	}
}

// A member over its rate on a reliable stream is slowed down by not being
// read, not read and dropped: frames written as fast as TCP takes them all
// pass the bucket (here to a member not connected: no_route), none is
// dropped for the rate.
func TestRateLimitBackpressure(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	n.noQUIC = map[string]bool{"relay-1": true}
	const rate = 4 << 20
	r := n.startRelay("relay-1", func(c *ServerConfig) { c.RateBytesPerSec = rate; c.RateBurstBytes = 1 << 16 })
	c, err := tls.Dial("tcp", r.info.Addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN},
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{n.cas["bank-a"].Issue(t, "bank-a-flooder").TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(wire.AppendHello(nil, wire.Hello{Version: wire.Version, Role: wire.RoleMember})); err != nil {
		t.Fatal(err)
	}
	if f, err := wire.NewReader(c, 64).Next(); err != nil || f.Type != wire.TypeHello {
		t.Fatalf("no HELLO: %v %v", f.Type, err)
	}
	frame := wire.AppendPacket(nil, "bank-b", make([]byte, wire.MaxBody-1-len("bank-b")))
	const frames = 96 // 6 MiB: 1.5 s at the rate
	for range frames {
		if _, err := c.Write(frame); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	waitFor(t, 20*time.Second, "every frame past the bucket", func() bool {
		d := r.srv.Drops()
		return d[DropNoRoute]+d[DropRateLimit] >= frames
	})
	if d := r.srv.Drops(); d[DropRateLimit] != 0 {
		t.Errorf("%d of %d frames on a reliable stream dropped for the rate, want 0 (the stream must be read at the rate instead): %v",
			d[DropRateLimit], frames, d)
	}
}

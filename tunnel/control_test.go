package tunnel

import (
	"bytes"
	"testing"
	"time"
)

func TestControlPrefixIsNotWireGuard(t *testing.T) {
	// WireGuard message types are little-endian uint32 1..4.
	for typ := byte(1); typ <= 4; typ++ {
		if isControl([]byte{typ, 0, 0, 0, 0, 0, 0, 0}) {
			t.Fatalf("WireGuard type %d taken for control", typ)
		}
	}
}

func TestControlFragments(t *testing.T) {
	payload := bytes.Repeat([]byte("attestation-"), 300) // 3600 bytes
	pkts, err := encodeControl(kindAnnounce, flagActive, 7, payload, 1240)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 3 {
		t.Fatalf("%d fragments, want 3", len(pkts))
	}
	for _, p := range pkts {
		if len(p) > 1240 || !isControl(p) {
			t.Fatalf("bad fragment of %d bytes", len(p))
		}
	}
	var r reassembler
	now := time.Unix(1000, 0)
	// Out of order, with a duplicate and an interleaved message from another sender.
	for i, p := range [][]byte{pkts[2], pkts[0], pkts[0]} {
		if _, _, ok, err := r.add("bank-a", p, now); ok || err != nil {
			t.Fatalf("step %d: early completion ok=%v err=%v", i, ok, err)
		}
	}
	if _, _, ok, _ := r.add("bank-b", pkts[1], now); ok {
		t.Fatal("fragment from another sender completed bank-a's message")
	}
	h, msg, ok, err := r.add("bank-a", pkts[1], now)
	if err != nil || !ok {
		t.Fatalf("not completed: ok=%v err=%v", ok, err)
	}
	if h.kind != kindAnnounce || h.flags != flagActive || !bytes.Equal(msg, payload) {
		t.Fatal("reassembled message differs")
	}
	// Stale partials expire.
	r.add("bank-c", pkts[0], now)
	r.add("bank-c", pkts[1], now.Add(partialTimeout+time.Second))
	if len(r.partials) != 1 { // only bank-c's newest; the older ones expired
		t.Fatalf("%d partials kept, want 1", len(r.partials))
	}
	if _, ok := r.partials[partialKey{"bank-b", 7}]; ok {
		t.Fatal("stale partial from bank-b not expired")
	}
}

func TestControlBounds(t *testing.T) {
	if _, err := encodeControl(kindAnnounce, 0, 1, make([]byte, 17*1000), 1000+controlHeaderLen); err == nil {
		t.Fatal("17 fragments accepted")
	}
	var r reassembler
	now := time.Unix(1000, 0)
	for i := range 2 * maxPartials {
		p, _ := encodeControl(kindAnnounce, 0, uint32(i), make([]byte, 300), 200)
		r.add("bank-a", p[0], now)
	}
	if len(r.partials) > maxPartials {
		t.Fatalf("%d partial messages kept, bound %d", len(r.partials), maxPartials)
	}
}

func FuzzControl(f *testing.F) {
	pkts, _ := encodeControl(kindAnnounce, flagActive|flagRequest, 9, bytes.Repeat([]byte{0xAB}, 2500), 1240)
	for _, p := range pkts {
		f.Add(p, uint8(0))
	}
	ack, _ := encodeControl(kindAck, 0, 3, make([]byte, 32), 1240)
	f.Add(ack[0], uint8(1))
	f.Add([]byte{0xFF, 'M', 'D', 0x01, 1, 0, 0, 0, 0, 1, 0, 16}, uint8(0))
	f.Add([]byte{0xFF, 'M', 'D'}, uint8(0))
	var r reassembler
	now := time.Unix(0, 0)
	f.Fuzz(func(t *testing.T, p []byte, who uint8) {
		now = now.Add(time.Millisecond)
		sender := string(rune('a' + who%4))
		h, msg, ok, err := r.add(sender, p, now)
		if err != nil || !ok {
			return
		}
		if len(msg) > maxControlMsg || h.count == 0 || h.count > maxFragments {
			t.Fatalf("out of bounds: %d bytes, %d fragments", len(msg), h.count)
		}
		if len(r.partials) > maxPartials {
			t.Fatalf("%d partials", len(r.partials))
		}
	})
}

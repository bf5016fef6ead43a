package wire

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var b []byte
	b = AppendHello(b, Hello{Version: Version, Role: RoleMember})
	b = AppendPacket(b, "bank-a", []byte("ciphertext"))
	b = AppendFrame(b, Type(0x7f), []byte("from the future")) // unknown: skipped
	b = AppendForward(b, "bank-a", "bank-b", []byte{1, 2, 3})
	b = AppendID(b, TypeRouteAdd, "bank-c")
	b = AppendGoAway(b, GoAwayNotAllowed, "removed from policy")

	r := NewReader(bytes.NewReader(b), 0)
	var skipped []string
	r.Skipped = func(t Type, n int) { skipped = append(skipped, fmt.Sprintf("%v/%d", t, n)) }
	f, err := r.Next()
	if err != nil || f.Type != TypeHello {
		t.Fatalf("hello: %v %v", f.Type, err)
	}
	if h, err := ParseHello(f.Body); err != nil || h.Role != RoleMember {
		t.Fatalf("ParseHello = %+v, %v", h, err)
	}
	f, _ = r.Next()
	id, p, err := ParsePacket(f.Body)
	if err != nil || string(id) != "bank-a" || string(p) != "ciphertext" {
		t.Fatalf("packet = %q %q %v", id, p, err)
	}
	f, _ = r.Next()
	if f.Type != TypeForward {
		t.Fatalf("unknown frame not skipped: got %v", f.Type)
	}
	if fmt.Sprint(skipped) != "[type(0x7f)/15]" {
		t.Fatalf("Skipped saw %v, want the unknown frame", skipped)
	}
	src, dst, p, err := ParseForward(f.Body)
	if err != nil || string(src) != "bank-a" || string(dst) != "bank-b" || !bytes.Equal(p, []byte{1, 2, 3}) {
		t.Fatalf("forward = %q %q %v %v", src, dst, p, err)
	}
	f, _ = r.Next()
	if id, err := ParseID(f.Body); err != nil || f.Type != TypeRouteAdd || string(id) != "bank-c" {
		t.Fatalf("route add = %v %q %v", f.Type, id, err)
	}
	f, _ = r.Next()
	if c, reason, err := ParseGoAway(f.Body); err != nil || c != GoAwayNotAllowed || reason != "removed from policy" {
		t.Fatalf("goaway = %d %q %v", c, reason, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
}

func TestReaderErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"truncated header", []byte{0x02, 0x00}, 0, io.ErrUnexpectedEOF},
		{"truncated body", []byte{0x02, 0x00, 0x05, 1, 2}, 0, io.ErrUnexpectedEOF},
		{"truncated unknown body", []byte{0x70, 0x00, 0x05, 1}, 0, io.ErrUnexpectedEOF},
		{"over limit before allocating", []byte{0x02, 0xff, 0xff}, 1500, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tt.in), tt.max).Next()
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := ParseDatagram([]byte{2, 0, 9, 1}); !errors.Is(err, ErrMalformed) {
		t.Errorf("short datagram: %v", err)
	}
	if _, err := ParseDatagram(append(AppendPacket(nil, "a", nil), 0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("trailing byte in datagram: %v", err)
	}
	if _, _, err := ParsePacket([]byte{0}); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty id: %v", err)
	}
	if _, _, err := ParsePacket([]byte{MaxIDLen + 1}); !errors.Is(err, ErrMalformed) {
		t.Errorf("long id: %v", err)
	}
	if _, _, _, err := ParseForward([]byte{1, 'a', 5, 'b'}); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated dst: %v", err)
	}
	if _, err := ParseHello([]byte{2, RoleMember}); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: %v", err)
	}
	if _, err := ParseID([]byte{1, 'a', 'b'}); !errors.Is(err, ErrMalformed) {
		t.Errorf("trailing id bytes: %v", err)
	}
}

// FuzzReader feeds arbitrary streams to the frame reader and every body
// parser: nothing may panic, bodies respect the limit, and a well-formed
// PACKET re-encodes to the same bytes.
func FuzzReader(f *testing.F) {
	f.Add(AppendPacket(AppendHello(nil, Hello{Version: Version, Role: RoleMember}), "bank-a", []byte("x")))
	f.Add(AppendForward(nil, "a", "b", make([]byte, 1200)))
	f.Add(AppendFrame(nil, Type(0xee), []byte("skip me")))
	f.Add([]byte{0x02, 0xff, 0xff, 0x01})
	f.Add(AppendGoAway(AppendID(nil, TypeRouteDel, "m"), 1, "bye"))
	if frames, err := PolicyFrames(2, []byte("policy")); err == nil {
		f.Add(frames[0])
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 2048)
		for i := 0; i < 64; i++ {
			fr, err := r.Next()
			if err != nil {
				return
			}
			if len(fr.Body) > 2048 || !fr.Type.Known() {
				t.Fatalf("frame %v with %d bytes passed the reader", fr.Type, len(fr.Body))
			}
			checkBody(t, fr)
		}
	})
}

// FuzzDatagram does the same for the QUIC datagram path.
func FuzzDatagram(f *testing.F) {
	f.Add(AppendPacket(nil, "bank-b", []byte("ciphertext")))
	f.Add(AppendForward(nil, "a", "b", nil))
	f.Add([]byte{0x04, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := ParseDatagram(in)
		if err != nil {
			return
		}
		checkBody(t, fr)
	})
}

func checkBody(t *testing.T, fr Frame) {
	switch fr.Type {
	case TypePacket, TypePacketStream:
		id, p, err := ParsePacket(fr.Body)
		if err == nil {
			if re := AppendPacket(nil, string(id), p); !bytes.Equal(re[HeaderLen:], fr.Body) {
				t.Fatalf("PACKET does not round-trip")
			}
		}
	case TypeForward, TypeForwardStream:
		s, d, p, err := ParseForward(fr.Body)
		if err == nil {
			if re := AppendForward(nil, string(s), string(d), p); !bytes.Equal(re[HeaderLen:], fr.Body) {
				t.Fatalf("FORWARD does not round-trip")
			}
		}
	case TypeHello:
		_, _ = ParseHello(fr.Body)
	case TypeRouteAdd, TypeRouteDel:
		_, _ = ParseID(fr.Body)
	case TypeGoAway:
		_, _, _ = ParseGoAway(fr.Body)
	case TypePolicy:
		checkPolicy(t, fr.Body)
	}
}

// checkPolicy: a POLICY body that parses stays within its bundle and
// re-encodes to the same bytes.
func checkPolicy(t *testing.T, body []byte) {
	p, err := ParsePolicy(body)
	if err != nil {
		return
	}
	if p.Total < 1 || p.Total > MaxPolicySize || len(p.Chunk) == 0 || p.Offset+len(p.Chunk) > p.Total {
		t.Fatalf("POLICY part out of bounds: total %d offset %d chunk %d", p.Total, p.Offset, len(p.Chunk))
	}
	hdr := binary.BigEndian.AppendUint64(nil, p.Version)
	hdr = append(hdr, p.Sum[:]...)
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(p.Total))
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(p.Offset))
	if re := AppendFrame(nil, TypePolicy, hdr, p.Chunk); !bytes.Equal(re[HeaderLen:], body) {
		t.Fatalf("POLICY does not round-trip")
	}
}

func TestPolicyFrames(t *testing.T) {
	bundle := bytes.Repeat([]byte("signed policy bundle\n"), 2000) // 42 KB: 3 chunks
	frames, err := PolicyFrames(7, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 3 {
		t.Fatalf("%d frames, want 3", len(frames))
	}
	var stream []byte
	for _, f := range frames {
		stream = append(stream, f...)
	}
	r := NewReader(bytes.NewReader(stream), 0)
	var got []byte
	for range frames {
		f, err := r.Next()
		if err != nil || f.Type != TypePolicy {
			t.Fatalf("frame %v: %v", f.Type, err)
		}
		p, err := ParsePolicy(f.Body)
		if err != nil {
			t.Fatal(err)
		}
		if p.Version != 7 || p.Total != len(bundle) || p.Offset != len(got) || p.Sum != sha256.Sum256(bundle) {
			t.Fatalf("part %+v", p)
		}
		got = append(got, p.Chunk...)
	}
	if !bytes.Equal(got, bundle) {
		t.Fatal("reassembled bundle differs")
	}
	for _, n := range []int{0, MaxPolicySize + 1} {
		if _, err := PolicyFrames(1, make([]byte, n)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("bundle of %d bytes: %v, want ErrTooLarge", n, err)
		}
	}
}

func TestParsePolicyErrors(t *testing.T) {
	body := func(total, off uint32, chunk int) []byte {
		b := make([]byte, PolicyHeaderLen, PolicyHeaderLen+chunk)
		binary.BigEndian.PutUint32(b[40:44], total)
		binary.BigEndian.PutUint32(b[44:48], off)
		return append(b, make([]byte, chunk)...)
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"short", make([]byte, PolicyHeaderLen-1), ErrMalformed},
		{"empty chunk", body(10, 0, 0), ErrMalformed},
		{"zero total", body(0, 0, 1), ErrTooLarge},
		{"total over the limit", body(MaxPolicySize+1, 0, 1), ErrTooLarge},
		{"chunk beyond total", body(10, 8, 3), ErrMalformed},
		{"offset overflow", body(10, 0xffffffff, 1), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePolicy(tt.in); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := ParsePolicy(body(10, 7, 3)); err != nil {
		t.Fatalf("last chunk: %v", err)
	}
}

// FuzzParsePolicy: no POLICY body makes the parser panic or return a part
// outside its bundle; what parses round-trips.
func FuzzParsePolicy(f *testing.F) {
	frames, _ := PolicyFrames(3, bytes.Repeat([]byte("x"), PolicyChunk+10))
	for _, fr := range frames {
		f.Add(fr[HeaderLen:])
	}
	f.Add(make([]byte, PolicyHeaderLen+1))
	f.Fuzz(func(t *testing.T, body []byte) { checkPolicy(t, body) })
}

func BenchmarkAppendParsePacket(b *testing.B) {
	payload := make([]byte, 1200)
	buf := make([]byte, 0, 1300)
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		buf = AppendPacket(buf[:0], "bank-b", payload)
		fr, _ := ParseDatagram(buf)
		_, _, _ = ParsePacket(fr.Body)
	}
}

// A HELLO without flags is the same bytes as before flags existed; one
// with flags carries them in a third byte, which a peer that predates
// them skips (ParseHello has always allowed extra bytes).
func TestHelloFlags(t *testing.T) {
	plain := AppendHello(nil, Hello{Version: Version, Role: RoleMember})
	if want := []byte{byte(TypeHello), 0, 2, Version, RoleMember}; !bytes.Equal(plain, want) {
		t.Fatalf("HELLO without flags = %x, want %x", plain, want)
	}
	f, err := ParseDatagram(AppendHello(nil, Hello{Version: Version, Role: RoleRelay, Flags: HelloStreamTypes}))
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseHello(f.Body)
	if err != nil || h.Flags != HelloStreamTypes || h.Role != RoleRelay {
		t.Fatalf("ParseHello = %+v, %v; want the relay role and HelloStreamTypes", h, err)
	}
	for _, ty := range []Type{TypePacketStream, TypeForwardStream} {
		if !ty.Known() {
			t.Errorf("%v not a known type: the reader would skip it", ty)
		}
	}
	if StreamType(TypePacket) != TypePacketStream || StreamType(TypeForward) != TypeForwardStream || StreamType(TypePing) != TypePing {
		t.Error("StreamType maps PACKET and FORWARD to their stream types and nothing else")
	}
}

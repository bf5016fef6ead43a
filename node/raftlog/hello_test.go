package raftlog

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestReadHello: the cluster of a dialer's hello is read and the bytes are
// given back exactly; anything else is refused without reading past the
// first frame's limit.
func TestReadHello(t *testing.T) {
	h := hello{From: 3, To: 1, Cluster: "beta"}
	frame := appendFrame(nil, frameHello, h.marshal())
	rest := appendFrame(nil, frameLane, []byte{1})
	cluster, raw, err := ReadHello(bytes.NewReader(append(bytes.Clone(frame), rest...)))
	if err != nil || cluster != "beta" || !bytes.Equal(raw, frame) {
		t.Fatalf("ReadHello = %q, %x, %v; want beta, %x", cluster, raw, err, frame)
	}
	for _, x := range []struct {
		name string
		in   []byte
		want error
	}{
		{"not a hello", rest, ErrProtocol},
		{"too long", appendFrameHeader(nil, frameHello, maxHelloLen+1), ErrTooLarge},
		{"bad version", append([]byte{9}, frame[1:]...), ErrProtocol},
		{"malformed", appendFrame(nil, frameHello, []byte{1, 2, 3}), ErrProtocol},
		{"cut short", frame[:len(frame)-1], io.ErrUnexpectedEOF},
	} {
		if _, _, err := ReadHello(bytes.NewReader(x.in)); !errors.Is(err, x.want) {
			t.Errorf("%s: err = %v, want %v", x.name, err, x.want)
		}
	}
}

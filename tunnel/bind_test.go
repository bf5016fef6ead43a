package tunnel

import (
	"bytes"
	"net"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// batchTransport hands out queued packets through ReadPackets, all that
// are queued at once (up to len(bufs)), as relay.Client does.
type batchTransport struct {
	pkts  [][]byte
	from  []string
	calls int
}

func (t *batchTransport) WritePacket([]byte, string) error { return nil }
func (t *batchTransport) MaxPacketSize() int               { return 4096 }
func (t *batchTransport) Close() error                     { return nil }

func (t *batchTransport) ReadPacket(buf []byte) (int, string, error) {
	panic("the Bind must read through ReadPackets")
}

func (t *batchTransport) ReadPackets(bufs [][]byte, sizes []int, from []string) (int, error) {
	t.calls++
	if len(t.pkts) == 0 {
		return 0, net.ErrClosed
	}
	n := 0
	for n < len(bufs) && len(t.pkts) > 0 {
		sizes[n] = copy(bufs[n], t.pkts[0])
		from[n] = t.from[0]
		t.pkts, t.from = t.pkts[1:], t.from[1:]
		n++
	}
	return n, nil
}

// TestBindReceivesBatches: over a transport that hands out batches, one
// receive call gives WireGuard every packet waiting, in order, each with
// its sender; control packets go to the control function and stay in the
// batch with size 0 (which wireguard-go skips), because wireguard-go reads
// packet i from its own buffer i.
func TestBindReceivesBatches(t *testing.T) {
	data := func(b byte) []byte { return append([]byte{wgTransportType, 0, 0, 0}, bytes.Repeat([]byte{b}, 40)...) }
	ctl, err := encodeControl(kindAnnounce, 0, 1, []byte("attestation"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	tr := &batchTransport{
		pkts: [][]byte{data(1), ctl[0], data(2), data(3)},
		from: []string{"member-a", "member-b", "member-a", "member-c"},
	}
	var controls []string
	b := NewBind(tr, func(sender string, pkt []byte) { controls = append(controls, sender) }, nil)
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if b.BatchSize() != bindBatch {
		t.Fatalf("BatchSize = %d over a batch transport, want %d", b.BatchSize(), bindBatch)
	}
	bufs := make([][]byte, bindBatch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, bindBatch)
	eps := make([]conn.Endpoint, bindBatch)
	n, err := fns[0](bufs, sizes, eps)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 || tr.calls != 1 {
		t.Fatalf("one receive gave %d packets in %d transport calls, want 4 in 1", n, tr.calls)
	}
	want := []struct {
		size int
		ep   string
		b    byte
	}{{44, "member-a", 1}, {0, "", 0}, {44, "member-a", 2}, {44, "member-c", 3}}
	for i, w := range want {
		if sizes[i] != w.size {
			t.Errorf("packet %d: size %d, want %d", i, sizes[i], w.size)
			continue
		}
		if w.size == 0 {
			continue
		}
		if got := eps[i].DstToString(); got != w.ep {
			t.Errorf("packet %d: from %s, want %s", i, got, w.ep)
		}
		if bufs[i][4] != w.b {
			t.Errorf("packet %d: payload %x, want packet %d", i, bufs[i][4], w.b)
		}
	}
	if len(controls) != 1 || controls[0] != "member-b" {
		t.Errorf("control packets went to the control function from %v, want [member-b]", controls)
	}
	if in := b.pktIn.Load(); in != 3 {
		t.Errorf("pktIn = %d, want 3 (control packets are not WireGuard's)", in)
	}
}

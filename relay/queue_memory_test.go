package relay

import (
	"crypto/tls"
	"fmt"
	"io"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/relay/wire"
)

// What a link's full send queues pin in memory, counted in the capacity of
// the buffers they hold (a frame of 100 bytes in a 16 KiB buffer pins
// 16 KiB), must stay within what it was before 16 KiB packets (issue #15):
// (QueueLen + urgentQueueLen) × (4096 + ForwardOverhead), 3.2 MB at the
// default QueueLen 512, whatever the mix of frame sizes; and the data
// queue must still hold QueueLen frames of the tunnel's usual 1.3 KB
// packets (a byte bound counted in capacity with one 16 KiB buffer size
// would have shrunk it to an eighth). Found by review of f2d7279: every
// frame came from one pool of 16453-byte buffers and the byte bound
// counted len, so a full link pinned up to 12.6 MB.
func TestQueuedMemoryPerLink(t *testing.T) {
	const queueLen = 512
	old := (queueLen + urgentQueueLen) * boundFrame
	fill := func(sizes []int) (pinned, frames, data int) {
		l := newLink(PathTCP, nil, struct{ io.ReadWriter }{}, tls.ConnectionState{},
			func(quic.ApplicationErrorCode, string) {}, queueLen, func(string) {})
		for i := range 4 * queueLen {
			src := string(rune('a' + i%8))
			for _, n := range sizes {
				f := newFrame(n)
				f = append(f, make([]byte, n)...)
				l.sendFrom(src, f, false)
			}
		}
		data = l.data.len()
		for _, q := range []*fairQueue{l.urgent, l.data} {
			q.drain(func(b []byte) { pinned, frames = pinned+cap(b), frames+1 })
		}
		return pinned, frames, data
	}
	worst := 0
	for _, sizes := range [][]int{
		{100, 1300}, // heartbeats and ACKs, 1.3 KB packets
		{urgentFrame, urgentFrame + 1},
		{100, boundFrame},
		{100, boundFrame + 1},
		{100, MaxPacketSizeTCP + wire.ForwardOverhead},
		{60, 600, 3000, 9000},
	} {
		t.Run(fmt.Sprint(sizes), func(t *testing.T) {
			pinned, frames, _ := fill(sizes)
			worst = max(worst, pinned)
			t.Logf("%d frames pin %d bytes (%.2f MB; bound before 16 KiB frames %.2f MB)", frames, pinned, float64(pinned)/1e6, float64(old)/1e6)
			if pinned > old {
				t.Errorf("a full link pins %.1f MB of frame buffers, %.1f× the %.1f MB before 16 KiB frames",
					float64(pinned)/1e6, float64(pinned)/float64(old), float64(old)/1e6)
			}
		})
	}
	t.Logf("worst case: %d bytes per link (%.2f MB)", worst, float64(worst)/1e6)
	if _, _, data := fill([]int{1300}); data != queueLen {
		t.Errorf("the data queue holds %d frames of 1.3 KB, want queue_len %d", data, queueLen)
	}
}

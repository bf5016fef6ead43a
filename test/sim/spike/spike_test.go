package spike

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

type memTUN struct {
	in, out chan []byte
	ev      chan tun.Event
	closed  chan struct{}
}

func newMemTUN() *memTUN {
	t := &memTUN{in: make(chan []byte, 64), out: make(chan []byte, 64), ev: make(chan tun.Event, 1), closed: make(chan struct{})}
	t.ev <- tun.EventUp
	return t
}
func (t *memTUN) File() *os.File { return nil }
func (t *memTUN) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	select {
	case p := <-t.in:
		sizes[0] = copy(bufs[0][off:], p)
		return 1, nil
	case <-t.closed:
		return 0, os.ErrClosed
	}
}
func (t *memTUN) Write(bufs [][]byte, off int) (int, error) {
	for _, b := range bufs {
		select {
		case t.out <- append([]byte(nil), b[off:]...):
		case <-t.closed:
			return 0, os.ErrClosed
		}
	}
	return len(bufs), nil
}
func (t *memTUN) MTU() (int, error)        { return 1280, nil }
func (t *memTUN) Name() (string, error)    { return "mem", nil }
func (t *memTUN) Events() <-chan tun.Event { return t.ev }
func (t *memTUN) Close() error             { close(t.closed); close(t.ev); return nil }
func (t *memTUN) BatchSize() int           { return 1 }

func ipv4(src, dst netip.Addr, payload []byte) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 253
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	copy(p[20:], payload)
	return p
}

// TestWireguardUnderSynctest: two real wireguard-go devices, in-memory TUNs,
// tunnel.Bind over tunneltest's in-memory transport, in a synctest bubble.
func TestWireguardUnderSynctest(t *testing.T) {
	start := time.Now()
	synctest.Test(t, func(t *testing.T) {
		nw := tunneltest.NewNetwork(tunneltest.Options{MaxPacketSize: 1400})
		ka, _ := tunnel.NewPrivateKey()
		kb, _ := tunnel.NewPrivateKey()
		ta, tb := newMemTUN(), newMemTUN()
		da := device.NewDevice(ta, tunnel.NewBind(nw.Transport("a"), nil, nil), device.NewLogger(device.LogLevelSilent, ""))
		db := device.NewDevice(tb, tunnel.NewBind(nw.Transport("b"), nil, nil), device.NewLogger(device.LogLevelSilent, ""))
		addrA, addrB := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
		if err := da.IpcSet("private_key=" + ka.String() + "\npublic_key=" + kb.PublicKey().String() + "\nendpoint=b\nallowed_ip=10.0.0.2/32\n"); err != nil {
			t.Fatal(err)
		}
		if err := db.IpcSet("private_key=" + kb.String() + "\npublic_key=" + ka.PublicKey().String() + "\nendpoint=a\nallowed_ip=10.0.0.1/32\n"); err != nil {
			t.Fatal(err)
		}
		da.Up()
		db.Up()
		v0 := time.Now()
		for i := range 20 {
			ta.in <- ipv4(addrA, addrB, []byte{byte(i)})
			select {
			case p := <-tb.out:
				if p[20] != byte(i) {
					t.Fatalf("got %d", p[20])
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("packet %d not through", i)
			}
			time.Sleep(30 * time.Second) // virtual: rekey timers etc. run
		}
		t.Logf("20 packets through, virtual time %v", time.Since(v0))
		da.Close()
		db.Close()
	})
	t.Logf("real %v", time.Since(start))
}

// Package simtun is a member host's tunnel for the seeded simulation
// (test/sim): a real relay.Client (TLS links over the simulation's
// network, through the real relay.Server forwarding), the real
// tunnel.Bind over it, and a real wireguard-go device encrypting every
// packet, with an in-memory TUN in place of gVisor's netstack, and
// pktstream's streams on top in place of gVisor's TCP (gVisor cannot run
// inside a testing/synctest bubble: test/sim/doc.go).
//
// What is not the appliance's code: the netstack (pktstream instead), and
// the tunnel's control plane (tunnel.Device's attestations, key rotation
// and peer removal: the simulation configures the WireGuard peers itself
// with SetPeers, from the keys and the policy it knows).
package simtun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/test/sim/pktstream"
	"github.com/memberd/memberd/tunnel"
)

// Peer is another member as this host's WireGuard knows it.
type Peer struct {
	Member string
	Key    tunnel.Key // public
	Addr   netip.Addr
}

// Host is one member host's tunnel.
type Host struct {
	Member string
	Addr   netip.Addr
	Stack  *pktstream.Stack
	Relay  *relay.Client

	priv tunnel.Key
	tun  *memTUN
	wg   *device.Device

	mu    sync.Mutex
	peers map[tunnel.Key]Peer // configured
	done  chan struct{}
	wgwg  sync.WaitGroup

	// Counters of the in-memory TUN.
	TUNDropped, Delivered atomic.Uint64
}

// New brings a host up: a fresh WireGuard key, the relay client from rc
// (its DialStream must be set), the device and the stream stack. log (nil:
// none) gets the Bind's lines, and with verbose WireGuard's too.
func New(member string, addr netip.Addr, rc relay.ClientConfig, log *slog.Logger, verbose bool) (*Host, error) {
	if rc.DialStream == nil {
		return nil, errors.New("simtun: the relay client needs DialStream (an in-process network)")
	}
	priv, err := tunnel.NewPrivateKey()
	if err != nil {
		return nil, err
	}
	c, err := relay.NewClient(rc)
	if err != nil {
		return nil, err
	}
	h := &Host{Member: member, Addr: addr, Relay: c, priv: priv, tun: newMemTUN(), done: make(chan struct{})}
	h.Stack = pktstream.New(addr, h.send)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bind := tunnel.NewBind(c, nil, log)
	wgLog := device.NewLogger(device.LogLevelSilent, "")
	if verbose {
		wgLog = &device.Logger{
			Verbosef: func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...), "sub", "wireguard") },
			Errorf:   func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...), "sub", "wireguard") },
		}
	}
	h.wg = device.NewDevice(h.tun, bind, wgLog)
	if err := h.wg.IpcSet("private_key=" + priv.String() + "\n"); err != nil {
		h.wg.Close()
		return nil, fmt.Errorf("simtun: WireGuard key: %w", err)
	}
	if err := h.wg.Up(); err != nil {
		h.wg.Close()
		return nil, fmt.Errorf("simtun: WireGuard up: %w", err)
	}
	h.wgwg.Add(2)
	go h.receive()
	go func() {
		defer h.wgwg.Done()
		c.Run(context.Background()) // until Close closes the client (through the Bind)
	}()
	return h, nil
}

// PublicKey is this host's WireGuard public key.
func (h *Host) PublicKey() tunnel.Key { return h.priv.PublicKey() }

// SetPeers makes the WireGuard peers exactly peers (what the tunnel's
// control plane leaves configured once every announcement has arrived):
// peers that stay are left alone (their sessions too), others removed.
func (h *Host) SetPeers(peers []Peer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	want := map[tunnel.Key]Peer{}
	for _, p := range peers {
		want[p.Key] = p
	}
	var b strings.Builder
	for k := range h.peers {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k)
		}
	}
	for _, p := range peers {
		if h.peers[p.Key] == p {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\n", p.Key, p.Member, p.Addr)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := h.wg.IpcSet(b.String()); err != nil {
		return err
	}
	h.peers = want
	retain(h.wg, peers)
	return nil
}

// WGSummary is WireGuard's view of the peers (public key prefix, last
// handshake, bytes), for logs.
func (h *Host) WGSummary() string {
	dump, err := h.wg.IpcGet()
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(dump, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			out = append(out, "peer "+v[:8])
		case "last_handshake_time_sec", "rx_bytes", "tx_bytes", "endpoint":
			out = append(out, k+"="+v)
		}
	}
	return strings.Join(out, " ")
}

// HasPeer says whether key is configured as a peer.
func (h *Host) HasPeer(key tunnel.Key) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.peers[key]
	return ok
}

// retained keeps every WireGuard peer ever configured reachable for the
// life of the process. wireguard-go drains a peer's queues from a
// finalizer (device/channels.go: runtime.SetFinalizer on
// autodrainingInboundQueue and autodrainingOutboundQueue); for a peer made
// inside a synctest bubble those are bubble channels, and the finalizer
// goroutine, outside the bubble, receiving from them is a fatal error
// ("receive on synctest channel from outside bubble") whenever the GC
// collects a removed peer, even after the bubble ended. A peer is small
// (two 1024-slot channels of pointers).
var retained struct {
	mu    sync.Mutex
	peers []*device.Peer
}

func retain(wg *device.Device, peers []Peer) {
	retained.mu.Lock()
	defer retained.mu.Unlock()
	for _, p := range peers {
		if dp := wg.LookupPeer(device.NoisePublicKey(p.Key)); dp != nil {
			retained.peers = append(retained.peers, dp)
		}
	}
}

// Close stops the host without a word to anyone (a crash): the streams
// reset, WireGuard and the relay connections close.
func (h *Host) Close() {
	h.Stack.Close()
	h.wg.Close() // closes the TUN and the Bind, which closes the relay client
	h.wgwg.Wait()
}

// send wraps a segment in an IPv4 header (protocol 253, for
// experiments) and hands it to WireGuard; a full queue drops it.
func (h *Host) send(dst netip.Addr, seg []byte) {
	p := make([]byte, 20+len(seg))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 253
	s, d := h.Addr.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	copy(p[20:], seg)
	select {
	case h.tun.in <- p:
	case <-h.tun.closed:
	default:
		h.TUNDropped.Add(1)
	}
}

// receive hands what WireGuard decrypted to the stack.
func (h *Host) receive() {
	defer h.wgwg.Done()
	for {
		select {
		case p := <-h.tun.out:
			if len(p) < 20 || p[0]>>4 != 4 || p[9] != 253 {
				continue
			}
			h.Delivered.Add(1)
			h.Stack.Input(netip.AddrFrom4([4]byte(p[12:16])), p[20:])
		case <-h.tun.closed:
			return
		}
	}
}

// memTUN is the interface WireGuard reads plaintext packets from (in) and
// writes decrypted ones to (out).
type memTUN struct {
	in, out   chan []byte
	ev        chan tun.Event
	closed    chan struct{}
	closeOnce sync.Once
}

func newMemTUN() *memTUN {
	t := &memTUN{in: make(chan []byte, 1024), out: make(chan []byte, 1024), ev: make(chan tun.Event, 1), closed: make(chan struct{})}
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
		default: // the host is not keeping up: dropped, as a full queue does
		}
	}
	return len(bufs), nil
}

func (t *memTUN) MTU() (int, error)        { return 1280, nil }
func (t *memTUN) Name() (string, error)    { return "simtun", nil }
func (t *memTUN) Events() <-chan tun.Event { return t.ev }
func (t *memTUN) BatchSize() int           { return 1 }

func (t *memTUN) Close() error {
	t.closeOnce.Do(func() {
		close(t.closed)
		close(t.ev)
	})
	return nil
}

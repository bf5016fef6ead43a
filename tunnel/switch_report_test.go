package tunnel

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/memberd/memberd/tunnel/internal/core"
)

// TestBindReportsKeySwitchPackets: the Bind reports a handshake response it
// is about to send (arm) and the first packet of an armed session (fire) on
// its switches channel, and holds that packet from WireGuard until the
// driver is done; packets of other sessions are not reported.
func TestBindReportsKeySwitchPackets(t *testing.T) {
	dataTo := func(index uint32) []byte {
		p := make([]byte, 48)
		p[0] = wgTransportType
		binary.LittleEndian.PutUint32(p[4:8], index)
		return p
	}
	tr := &batchTransport{
		pkts: [][]byte{dataTo(9), dataTo(7)},
		from: []string{"member-a", "member-a"},
	}
	switches := make(chan switchReq)
	b := newBind(tr, nil, nil, switches)
	b.wait = time.Minute // the test, not a timer, decides when the driver is done

	// Arm: a handshake response leaving for member-a is reported, copied.
	resp := make([]byte, messageResponseSize)
	resp[0] = wgResponseType
	sent := make(chan error, 1)
	go func() { sent <- b.Send([][]byte{resp}, Endpoint("member-a")) }()
	r := <-switches
	if r.member != "member-a" || len(r.resp) != messageResponseSize || &r.resp[0] == &resp[0] {
		t.Fatalf("arm report: member %q, %d-byte copy (copied: %v), want member-a and a copy of the response", r.member, len(r.resp), &r.resp[0] != &resp[0])
	}
	close(r.done)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}

	// Fire: session 7 is armed; the packet to session 9 goes through
	// unreported, the one to 7 is held until the driver is done.
	b.armed.set("member-a", 7)
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, 2048)}
	received := make(chan int, 2)
	go func() {
		for range 2 {
			n, err := fns[0](bufs, make([]int, 1), make([]conn.Endpoint, 1))
			if err != nil {
				t.Error(err)
				return
			}
			received <- n
		}
	}()
	if n := <-received; n != 1 {
		t.Fatalf("first receive gave %d packets, want 1", n)
	}
	r = <-switches
	if r.member != "member-a" || r.resp != nil {
		t.Fatalf("fire report: %+v, want member-a without a response", r)
	}
	select {
	case <-received:
		t.Fatal("the first packet of the armed session reached WireGuard before the driver was done")
	default:
	}
	close(r.done)
	if n := <-received; n != 1 {
		t.Fatalf("second receive gave %d packets, want 1", n)
	}
	if m := b.switchMissed.Load(); m != 0 {
		t.Fatalf("switchMissed = %d, want 0", m)
	}
}

// TestUAPI: the core's peer changes become the UAPI lines wireguard-go
// takes, in order, private key first.
func TestUAPI(t *testing.T) {
	var k1, k2, priv core.Key
	k1[0], k2[0], priv[0] = 1, 2, 3
	out := core.Output{
		Private: &priv,
		Config: []core.PeerOp{
			{Op: core.OpSet, Key: k1, Member: "bank-a", Addr: mustAddr("10.99.0.1"), Keepalive: 25},
			{Op: core.OpSet, Key: k2, Member: "bank-a"},
			{Op: core.OpKeepalive, Key: k1},
			{Op: core.OpRemove, Key: k2},
		},
	}
	h := func(k core.Key) string { return Key(k).String() }
	want := strings.Join([]string{
		"private_key=" + h(priv),
		"public_key=" + h(k1), "endpoint=bank-a", "replace_allowed_ips=true", "allowed_ip=10.99.0.1/32", "persistent_keepalive_interval=25",
		"public_key=" + h(k2), "endpoint=bank-a", "replace_allowed_ips=true", "persistent_keepalive_interval=0",
		"public_key=" + h(k1), "update_only=true", "persistent_keepalive_interval=0",
		"public_key=" + h(k2), "remove=true",
	}, "\n") + "\n"
	if got := uapi(out); got != want {
		t.Fatalf("uapi:\n%s\nwant:\n%s", got, want)
	}
	if got := uapi(core.Output{}); got != "" {
		t.Fatalf("uapi of nothing = %q, want empty (no IpcSet)", got)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

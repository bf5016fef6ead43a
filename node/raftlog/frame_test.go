package raftlog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

func TestFrameRoundTripAndLimits(t *testing.T) {
	h := hello{From: 1, To: 2, Cluster: "chan"}
	var b []byte
	b = appendFrame(b, frameHello, h.marshal())
	b = appendFrame(b, 99, []byte("future frame"))
	m := raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Term: 3, Entries: []raftpb.Entry{{Index: 1, Term: 3, Data: []byte("x")}}}
	mb, _ := m.Marshal()
	b = appendFrame(b, frameMsg, mb)
	fr := frameReader{r: bytes.NewReader(b), max: 1024}
	typ, p, err := fr.next()
	if err != nil || typ != frameHello {
		t.Fatalf("hello: %d %v", typ, err)
	}
	if got, err := parseHello(p); err != nil || got != h {
		t.Fatalf("hello = %+v %v", got, err)
	}
	if typ, _, err = fr.next(); err != nil || typ != 99 {
		t.Fatalf("unknown type: %d %v", typ, err)
	}
	typ, p, err = fr.next()
	var got raftpb.Message
	if err != nil || typ != frameMsg || got.Unmarshal(p) != nil || got.Term != 3 || len(got.Entries) != 1 {
		t.Fatalf("msg: %d %v %+v", typ, err, got)
	}
	if _, _, err = fr.next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	for name, tc := range map[string]struct {
		in   []byte
		want error
	}{
		"too large":   {appendFrameHeader(nil, frameMsg, 1<<30), ErrTooLarge},
		"bad version": {[]byte{2, 1, 0, 0, 0, 0}, ErrProtocol},
		"short":       {appendFrameHeader(nil, frameMsg, 10), io.ErrUnexpectedEOF},
	} {
		fr := frameReader{r: bytes.NewReader(tc.in), max: 1024}
		if _, _, err := fr.next(); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
}

// TestHandshake speaks the wire protocol by hand to a running node.
func TestHandshake(t *testing.T) {
	c := newCluster(t, 1, func(cfg *Config) { cfg.Peers = append(cfg.Peers, Peer{ID: 2, Addr: "n2"}) })
	n := c.nodes[1].node()
	addr := n.cfg.Listener.Addr().String()
	for _, tc := range []struct {
		name   string
		hello  []byte
		accept bool
	}{
		{"member", appendFrame(nil, frameHello, hello{From: 2, To: 1, Cluster: "test-channel"}.marshal()), true},
		{"wrong cluster", appendFrame(nil, frameHello, hello{From: 2, To: 1, Cluster: "other"}.marshal()), false},
		{"wrong node", appendFrame(nil, frameHello, hello{From: 2, To: 5, Cluster: "test-channel"}.marshal()), false},
		{"not a hello", appendFrame(nil, frameMsg, []byte{1, 2, 3}), false},
		{"bad version", []byte{9, 1, 0, 0, 0, 0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			conn.Write(tc.hello)
			fr := frameReader{r: conn, max: 4096}
			typ, p, err := fr.next()
			if !tc.accept {
				if err == nil && typ != frameReject {
					t.Fatalf("got frame %d, want reject or close", typ)
				}
				if err == nil {
					t.Logf("rejected: %s", p)
				}
				return
			}
			if err != nil || typ != frameHello {
				t.Fatalf("want hello, got %d %v", typ, err)
			}
			if h, _ := parseHello(p); h.From != 1 || h.To != 2 {
				t.Fatalf("reply %+v", h)
			}
			// A message claiming another sender is dropped, an unknown frame skipped.
			before := n.Status().Transport.Dropped
			m := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 3, To: 1, Term: 1}
			mb, _ := m.Marshal()
			conn.Write(appendFrame(appendFrame(nil, 42, []byte("?")), frameMsg, mb))
			deadline := time.Now().Add(5 * time.Second)
			for {
				d := n.Status().Transport.Dropped
				if d[DropBadSender] > before[DropBadSender] && d[DropUnknownType] > before[DropUnknownType] {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("drops not counted: %v", d)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestHandshakeUnknownSender: a node that follows a leader refuses a node
// its membership does not list; one that knows no leader lets it in (it
// may be a leader added since this node's configuration: see
// TestRebootstrappedNodeAcceptsNewLeader).
func TestHandshakeUnknownSender(t *testing.T) {
	c := newCluster(t, 1, nil) // one voter: it leads at once
	c.leader(10 * time.Second)
	lone := newCluster(t, 1, func(cfg *Config) { cfg.Peers = append(cfg.Peers, Peer{ID: 2, Addr: "n2"}) }) // never a leader
	for _, tc := range []struct {
		name   string
		n      *Node
		accept bool
	}{{"follows a leader", c.nodes[1].node(), false}, {"knows no leader", lone.nodes[1].node(), true}} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", tc.n.cfg.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			conn.Write(appendFrame(nil, frameHello, hello{From: 9, To: 1, Cluster: "test-channel"}.marshal()))
			typ, p, err := (&frameReader{r: conn, max: 4096}).next()
			switch {
			case tc.accept && (err != nil || typ != frameHello):
				t.Fatalf("want hello, got frame %d %v", typ, err)
			case !tc.accept && err == nil && typ != frameReject:
				t.Fatalf("got frame %d, want reject or close", typ)
			case !tc.accept && err == nil:
				t.Logf("rejected: %s", p)
			}
		})
	}
}

// TestDialerRejectedByWrongCluster: a node configured for another cluster
// never gets a connection; the leader's queue for it drains as unreachable.
func TestDialerRejectedByWrongCluster(t *testing.T) {
	c := newCluster(t, 1, func(cfg *Config) { cfg.Peers = append(cfg.Peers, Peer{ID: 2, Addr: "n2"}) })
	ln, err := c.net.Listen("n2")
	if err != nil {
		t.Fatal(err)
	}
	app := &testApp{}
	other, err := New(Config{ID: 2, Cluster: "other-channel", Peers: []Peer{{ID: 1, Addr: "n1"}, {ID: 2}},
		Dir: t.TempDir(), Dialer: c.net.Dialer("n2"), Listener: ln, Apply: app.apply, Logger: testLogger(t, 2),
		TickInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- other.Run(ctx) }()
	defer func() { cancel(); <-done; other.Close() }()
	n := c.nodes[1].node()
	deadline := time.Now().Add(5 * time.Second)
	for n.Status().Transport.Dropped[DropUnreachable] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no unreachable drops: %+v", n.Status().Transport)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if l := n.Leader(); l != 0 {
		t.Errorf("node 1 elected leader %d without a quorum", l)
	}
}

func FuzzFrameReader(f *testing.F) {
	m := raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Term: 3, Entries: []raftpb.Entry{{Index: 1, Term: 3, Data: []byte("x")}}}
	mb, _ := m.Marshal()
	var b []byte
	b = appendFrame(b, frameHello, hello{From: 1, To: 2, Cluster: "c"}.marshal())
	b = appendFrame(b, frameMsg, mb)
	f.Add(b)
	f.Add(appendFrame(nil, frameReject, []byte("no")))
	f.Add([]byte{1, 3, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{1, 1, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 9})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := frameReader{r: bytes.NewReader(data), max: 1 << 16}
		for {
			typ, p, err := fr.next()
			if err != nil {
				return
			}
			if len(p) > 1<<16 {
				t.Fatalf("payload %d over limit", len(p))
			}
			switch typ {
			case frameHello:
				if h, err := parseHello(p); err == nil {
					if h2, err := parseHello(h.marshal()); err != nil || h2 != h {
						t.Fatalf("hello round trip: %+v %+v %v", h, h2, err)
					}
				}
			case frameMsg:
				var m raftpb.Message
				m.Unmarshal(p)
			}
		}
	})
}

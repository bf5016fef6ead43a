package orderer

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/memberd/memberd/node/block"
)

// delayedChunk is a piece of a stream and when to pass it on.
type delayedChunk struct {
	b  []byte
	at time.Time
}

// delayPipe copies src to dst, each read passed on delay later (one way
// of a path's round trip; bandwidth unbounded).
func delayPipe(src, dst net.Conn, delay time.Duration) {
	ch := make(chan delayedChunk, 1<<14)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer dst.Close()
		for c := range ch {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.b); err != nil {
				return
			}
		}
	}()
	for {
		b := make([]byte, 32<<10)
		n, err := src.Read(b)
		if n > 0 {
			ch <- delayedChunk{b[:n], time.Now().Add(delay)}
		}
		if err != nil {
			close(ch)
			wg.Wait()
			return
		}
	}
}

// delayProxy forwards connections to target on loopback with rtt/2 of
// delay each way.
func delayProxy(t *testing.T, target string, rtt time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); delayPipe(c, s, rtt/2) }()
			go func() { defer wg.Done(); delayPipe(s, c, rtt/2) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// TestFetchLongRoundTrip: a catch-up over a path of a long round trip (a
// relay across the internet; 200 ms here) with gRPC's default receive
// window (64 KiB, grown about twice per round trip) took 9-10 round
// trips for 14 MB of blocks; with ClientOptions' windows it takes about 2.
// The figure compared is the time of the same fetch with both clients.
func TestFetchLongRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("orders 8,000 envelopes")
	}
	const rtt = 200 * time.Millisecond
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 200, BatchTimeout: 50 * time.Millisecond}, nil)
	l := cl.leader(10 * time.Second)
	res := newLoadResult()
	cl.load(t, cl.c.identity(t, "m1", "client1"), 8000, 2, 1000, res, nil)
	h := cl.node(l).Height()
	addr := delayProxy(t, cl.nodes[l-1].addr, rtt)
	fetch := func(opts []grpc.DialOption) time.Duration {
		conn, err := grpc.NewClient("passthrough:///"+addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		f := &DeliverFetcher{Peers: []ab.AtomicBroadcastClient{ab.NewAtomicBroadcastClient(conn)},
			Identity: cl.c.identity(t, "m2", "node-fetch"), Channel: "trade"}
		var n int64
		t0 := time.Now()
		if err := f.FetchBlocks(context.Background(), 1, h-1, func(b []byte) error { n += int64(len(b)); return nil }); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t0)
		t.Logf("%d blocks, %.1f MB in %v (%.1f round trips)", h-1, float64(n)/1e6, took.Round(time.Millisecond), float64(took)/float64(rtt))
		return took
	}
	def := fetch([]grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes))})
	ours := fetch(ClientOptions())
	if ours*10 > def*6 {
		t.Errorf("the fetch took %v with ClientOptions and %v with gRPC's default windows: want at most 0.6 of it", ours, def)
	}
}

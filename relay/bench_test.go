package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/internal/testpki"
)

// Forwarding benchmarks. Each runs an echo: member A sends to member B
// through the relay, B sends every packet back, with at most `window`
// packets in flight (a lost packet frees the window after a timeout and is
// counted as loss). The baseline is the same echo over plain loopback UDP
// sockets, measured in the same run:
//
//	go test -run '^$' -bench 'Forward|MemoryPerMember' ./relay/
//
// Reported: fwd_pkts/s (packets through the relay per second, both
// directions), MB/s of payload, loss_%.

const defaultWindow = 64

// echoer is one endpoint pair under test.
type echoer struct {
	send    func(p []byte) error          // A -> B
	recvB   func(buf []byte) (int, error) // at B
	echoB   func(p []byte) error          // B -> A
	recvA   func(buf []byte) (int, error) // at A
	closeFn func()
}

func runEcho(b *testing.B, e echoer, size int) { runEchoWindow(b, e, size, defaultWindow) }

func runEchoWindow(b *testing.B, e echoer, size, window int) {
	payload := make([]byte, size)
	sem := make(chan struct{}, window)
	var got, lost atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(2)
	go func() { // B echoes
		defer wg.Done()
		buf := make([]byte, 70000)
		for {
			n, err := e.recvB(buf)
			if err != nil {
				return
			}
			_ = e.echoB(buf[:n])
		}
	}()
	go func() { // A counts echoes
		defer wg.Done()
		buf := make([]byte, 70000)
		for {
			if _, err := e.recvA(buf); err != nil {
				return
			}
			got.Add(1)
			select {
			case <-sem:
			default:
			}
		}
	}()
	b.SetBytes(int64(2 * size))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		select {
		case sem <- struct{}{}:
		case <-time.After(50 * time.Millisecond):
			// The window is stuck: count what is in flight as lost.
			for len(sem) > 0 {
				<-sem
				lost.Add(1)
			}
			sem <- struct{}{}
		}
		_ = e.send(payload)
	}
	// Wait for the tail.
	deadline := time.Now().Add(2 * time.Second)
	for got.Load()+lost.Load() < int64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	e.closeFn()
	wg.Wait()
	g := got.Load()
	b.ReportMetric(float64(2*g)/elapsed.Seconds(), "fwd_pkts/s")
	b.ReportMetric(100*float64(int64(b.N)-g)/float64(b.N), "loss_%")
}

func udpEcho(b *testing.B) echoer {
	pa, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	pb, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	aAddr, bAddr := pa.LocalAddr().(*net.UDPAddr), pb.LocalAddr().(*net.UDPAddr)
	return echoer{
		send:    func(p []byte) error { _, err := pa.WriteToUDP(p, bAddr); return err },
		recvB:   func(buf []byte) (int, error) { n, _, err := pb.ReadFromUDP(buf); return n, err },
		echoB:   func(p []byte) error { _, err := pb.WriteToUDP(p, aAddr); return err },
		recvA:   func(buf []byte) (int, error) { n, _, err := pa.ReadFromUDP(buf); return n, err },
		closeFn: func() { pa.Close(); pb.Close() },
	}
}

func relayEcho(b *testing.B, quicOff bool) echoer {
	n := newTestNet(b, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	r := n.startRelay("relay-1", func(c *ServerConfig) { c.RateBytesPerSec = -1; c.Logger = nil })
	if quicOff {
		r.StopQUIC()
	}
	quiet := func(c *ClientConfig) { c.Logger = nil; c.QUICTimeout = 200 * time.Millisecond }
	a, bb := n.member("bank-a", quiet), n.member("bank-b", quiet)
	waitReady(b, a, bb)
	want := PathQUIC
	if quicOff {
		want = PathTCP
	}
	if p := a.Status()[0].Path; p != want {
		b.Fatalf("path %s, want %s", p, want)
	}
	read := func(c *Client) func([]byte) (int, error) {
		return func(buf []byte) (int, error) { n, _, err := c.ReadPacket(buf); return n, err }
	}
	return echoer{
		send:  func(p []byte) error { return a.WritePacket(p, "bank-b") },
		recvB: read(bb),
		echoB: func(p []byte) error { return bb.WritePacket(p, "bank-a") },
		recvA: read(a),
		closeFn: func() {
			b.Logf("MaxPacketSize=%d relay drops=%v a drops=%v b drops=%v", a.MaxPacketSize(), r.srv.Drops(), a.Drops(), bb.Drops())
			a.Close()
			bb.Close()
			r.Stop()
		},
	}
}

func BenchmarkForward(b *testing.B) {
	for _, size := range []int{100, 1200} {
		b.Run(fmt.Sprintf("udp-baseline/%dB", size), func(b *testing.B) { runEcho(b, udpEcho(b), size) })
		b.Run(fmt.Sprintf("quic-raw-baseline/%dB", size), func(b *testing.B) { runEcho(b, quicRawEcho(b), size) })
		b.Run(fmt.Sprintf("quic/%dB", size), func(b *testing.B) { runEcho(b, relayEcho(b, false), size) })
		b.Run(fmt.Sprintf("tcp/%dB", size), func(b *testing.B) { runEcho(b, relayEcho(b, true), size) })
	}
}

// BenchmarkLatency runs the echo with one packet in flight: ns/op is the
// round trip A -> B -> A (through the relay: one relay hop per direction),
// next to plain loopback UDP A -> B -> A. Added latency per hop is
// (relay - baseline) / 2.
func BenchmarkLatency(b *testing.B) {
	const size = 100
	b.Run("udp-baseline", func(b *testing.B) { runEchoWindow(b, udpEcho(b), size, 1) })
	b.Run("quic-raw-baseline", func(b *testing.B) { runEchoWindow(b, quicRawEcho(b), size, 1) })
	b.Run("quic", func(b *testing.B) { runEchoWindow(b, relayEcho(b, false), size, 1) })
	b.Run("tcp", func(b *testing.B) { runEchoWindow(b, relayEcho(b, true), size, 1) })
}

// BenchmarkMemoryPerMember connects N members (200; 20 with -short) to one
// relay over QUIC in this process and reports the heap growth per member.
// Relay and clients share the process, so the figure covers both ends of
// each connection.
func BenchmarkMemoryPerMember(b *testing.B) {
	members := 200
	if testing.Short() {
		members = 20
	}
	for i := 0; i < b.N; i++ {
		ids := make([]string, members)
		for j := range ids {
			ids[j] = fmt.Sprintf("m%03d", j)
		}
		n := newTestNet(b, ids, []string{"relay-1"})
		r := n.startRelay("relay-1", func(c *ServerConfig) { c.Logger = nil })
		// Issue certificates before measuring.
		certs := make(map[string]tlsCert, members)
		for _, m := range ids {
			certs[m] = n.cas[m].Issue(b, m).TLS()
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		cs := make([]*Client, 0, members)
		for _, m := range ids {
			cs = append(cs, n.client(certs[m], func(c *ClientConfig) { c.Logger = nil }))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		for _, c := range cs {
			if err := c.WaitReady(ctx); err != nil {
				b.Fatal(err)
			}
		}
		cancel()
		waitFor(b, 30*time.Second, "all members registered", func() bool { return len(r.srv.Members()) == members })
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/float64(members), "heap_B/member")
		b.ReportMetric(float64(runtime.NumGoroutine())/float64(members), "goroutines/member")
		for _, c := range cs {
			c.Close()
		}
		r.Stop()
	}
}

// quicRawEcho is a second baseline: plain quic-go datagrams between two
// endpoints (no relay, no framing), to separate quic-go's own limits from
// the relay's.
func quicRawEcho(b *testing.B) echoer {
	srvCert := testpki.SelfSigned(b, "bench").TLS()
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srvCert}, NextProtos: []string{"bench"}},
		&quic.Config{EnableDatagrams: true})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	accepted := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	ca, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"bench"}},
		&quic.Config{EnableDatagrams: true})
	if err != nil {
		b.Fatal(err)
	}
	cb := <-accepted
	if cb == nil {
		b.Fatal("no QUIC connection accepted")
	}
	recv := func(c *quic.Conn) func([]byte) (int, error) {
		return func(buf []byte) (int, error) {
			p, err := c.ReceiveDatagram(ctx)
			return copy(buf, p), err
		}
	}
	return echoer{
		send:  ca.SendDatagram,
		recvB: recv(cb),
		echoB: cb.SendDatagram,
		recvA: recv(ca),
		closeFn: func() {
			ca.CloseWithError(0, "")
			cb.CloseWithError(0, "")
			ln.Close()
		},
	}
}

package relay

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/relay/wire"
)

// throttledStream is a destination link's stream that takes rate bytes
// per second (a saturated downlink) and records, per source, the payload
// bytes delivered and each packet's queueing delay (the send time is in
// the payload).
type throttledStream struct {
	rate  float64
	start time.Time
	mu    sync.Mutex
	sent  int
	bytes map[byte]int
	delay map[byte][]time.Duration
}

func (s *throttledStream) Read([]byte) (int, error) { select {} }

func (s *throttledStream) Write(p []byte) (int, error) {
	now := time.Now()
	r := wire.NewReader(bytes.NewReader(p), 0)
	s.mu.Lock()
	for {
		f, err := r.Next()
		if err != nil {
			break
		}
		_, pl, err := wire.ParsePacket(f.Body)
		if err != nil || len(pl) < 9 {
			continue
		}
		s.bytes[pl[0]] += len(pl)
		s.delay[pl[0]] = append(s.delay[pl[0]], now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(pl[1:])))))
	}
	s.sent += len(p)
	due := s.start.Add(time.Duration(float64(s.sent) / s.rate * float64(time.Second)))
	s.mu.Unlock()
	time.Sleep(time.Until(due))
	return len(p), nil
}

// fairRun sends, for dur, two members' packets to one destination link of
// capacity linkRate: "flood" at floodRate and "quiet" at quietRate (payload
// bytes per second, 1200-byte packets). fair false queues both under one
// source, which is the single FIFO the link had before (tail drop at
// queue_len). It returns what reached the destination per source (MB/s)
// and the quiet member's median and 99th percentile queueing delay.
func fairRun(fair bool, dur time.Duration, linkRate, floodRate, quietRate float64) (floodMBs, quietMBs float64, p50, p99 time.Duration) {
	ts := &throttledStream{rate: linkRate, start: time.Now(), bytes: map[byte]int{}, delay: map[byte][]time.Duration{}}
	l := newLink(PathTCP, nil, ts, tls.ConnectionState{}, func(quic.ApplicationErrorCode, string) {}, 512, func(string) {})
	done := make(chan struct{})
	go func() { l.writeLoop(); close(done) }()
	var wg sync.WaitGroup
	stop := time.Now().Add(dur)
	send := func(src string, rate float64) {
		defer wg.Done()
		key := src
		if !fair {
			key = ""
		}
		const size = 1200
		start := time.Now()
		n := 0
		for now := start; now.Before(stop); now = time.Now() {
			for due := int(rate * now.Sub(start).Seconds() / size); n < due; n++ {
				pl := make([]byte, size)
				pl[0] = src[0]
				binary.BigEndian.PutUint64(pl[1:], uint64(time.Now().UnixNano()))
				l.sendFrom(key, wire.AppendPacket(newFrame(wire.PacketOverhead+size), src, pl), false)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wg.Add(2)
	go send("flood", floodRate)
	go send("quiet", quietRate)
	wg.Wait()
	l.close(codeShutdown, "done")
	<-done
	ts.mu.Lock()
	defer ts.mu.Unlock()
	d := ts.delay['q']
	slices.Sort(d)
	if len(d) > 0 {
		p50, p99 = d[len(d)/2], d[len(d)*99/100]
	}
	return float64(ts.bytes['f']) / dur.Seconds() / 1e6, float64(ts.bytes['q']) / dur.Seconds() / 1e6, p50, p99
}

// BenchmarkFairDestination: one member floods a destination at its rate
// limit (12.5 MB/s) while another sends 5 MB/s to the same destination,
// whose link takes 12.5 MB/s. Both queue disciplines in the same run:
//
//	go test -run '^$' -bench FairDestination -benchtime 3x ./relay/
//
// Reported: quiet_MB/s and quiet_p99_ms per discipline (fifo: the single
// queue before issue #11; fair: per-source deficit round robin), and
// quiet_fair/fifo, the ratio of the quiet member's throughput.
func BenchmarkFairDestination(b *testing.B) {
	const dur = 2 * time.Second
	var fifoQ, fairQ, fifoF, fairF float64
	var fifoP99, fairP99, fifoP50, fairP50 time.Duration
	for range b.N {
		f1, q1, p50a, p99a := fairRun(false, dur, 12.5e6, 12.5e6, 5e6)
		f2, q2, p50b, p99b := fairRun(true, dur, 12.5e6, 12.5e6, 5e6)
		b.Logf("fifo: quiet %.2f MB/s (p50 %v, p99 %v), flood %.2f MB/s; fair: quiet %.2f MB/s (p50 %v, p99 %v), flood %.2f MB/s",
			q1, p50a.Round(time.Millisecond/10), p99a.Round(time.Millisecond/10), f1, q2, p50b.Round(time.Millisecond/10), p99b.Round(time.Millisecond/10), f2)
		fifoF, fifoQ, fifoP50, fifoP99 = fifoF+f1, fifoQ+q1, fifoP50+p50a, fifoP99+p99a
		fairF, fairQ, fairP50, fairP99 = fairF+f2, fairQ+q2, fairP50+p50b, fairP99+p99b
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return d.Seconds() * 1000 / n }
	b.ReportMetric(fifoQ/n, "fifo_quiet_MB/s")
	b.ReportMetric(fairQ/n, "fair_quiet_MB/s")
	b.ReportMetric(fifoF/n, "fifo_flood_MB/s")
	b.ReportMetric(fairF/n, "fair_flood_MB/s")
	b.ReportMetric(ms(fifoP50), "fifo_quiet_p50_ms")
	b.ReportMetric(ms(fairP50), "fair_quiet_p50_ms")
	b.ReportMetric(ms(fifoP99), "fifo_quiet_p99_ms")
	b.ReportMetric(ms(fairP99), "fair_quiet_p99_ms")
	b.ReportMetric(fairQ/fifoQ, "quiet_fair/fifo")
}

// BenchmarkSendQueue: the cost of queueing and dequeueing one frame, the
// fair queue against the buffered channel the link used before, in the
// same run (one goroutine, so no scheduling in the figure):
//
//	go test -run '^$' -bench SendQueue ./relay/
func BenchmarkSendQueue(b *testing.B) {
	frame := make([]byte, 1200)
	b.Run("chan-fifo", func(b *testing.B) {
		q := make(chan []byte, 512)
		for range b.N {
			select {
			case q <- frame:
			default:
			}
			<-q
		}
	})
	for _, sources := range []int{1, 8} {
		b.Run(fmt.Sprintf("fair/%d-sources", sources), func(b *testing.B) {
			q := newFairQueue(512, make(chan struct{}, 1))
			keys := make([]string, sources)
			for i := range keys {
				keys[i] = fmt.Sprintf("member-%d", i)
			}
			for i := range 64 { // a backlog, so flows stay active
				q.push(keys[i%sources], frame)
			}
			b.ResetTimer()
			for i := range b.N {
				q.push(keys[i%sources], frame)
				q.pop()
			}
		})
	}
}

// BenchmarkPushOut: the cost of a push into a full queue that pushes out
// a flood's newest frame (the saturated path), and of a frame's way
// through newFrame, a full queue and recycleFrame, by frame size:
//
//	go test -run '^$' -bench PushOut -benchmem ./relay/
func BenchmarkPushOut(b *testing.B) {
	for _, n := range []int{100, 1300, MaxPacketSizeTCP} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			q := newFairQueue(512, make(chan struct{}, 1))
			for range 1024 {
				for _, f := range q.push("flood", append(newFrame(n), make([]byte, n)...)) {
					recycleFrame(f)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				for _, f := range q.push("flood", append(newFrame(n), make([]byte, n)...)) {
					recycleFrame(f)
				}
				for _, f := range q.push(fmt.Sprint(i%8), append(newFrame(n), make([]byte, n)...)) {
					recycleFrame(f)
				}
				recycleFrame(q.pop())
			}
		})
	}
}

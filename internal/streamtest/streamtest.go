// Package streamtest holds the stream checks and stream benchmarks that the
// tunnel tests and the whole-consortium tests share: a deterministic byte
// pattern, a hash-checked transfer, and the throughput and round-trip
// benchmark bodies (so both measure paths the same way and their figures
// compare).
package streamtest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"testing"
	"time"
)

type pattern struct{ rng *rand.ChaCha8 }

// NewPattern returns an endless deterministic pseudo-random byte stream;
// the same seed gives the same bytes.
func NewPattern(seed byte) io.Reader {
	var s [32]byte
	s[0] = seed
	return &pattern{rng: rand.NewChaCha8(s)}
}

func (p *pattern) Read(b []byte) (int, error) {
	p.rng.Read(b)
	return len(b), nil
}

// Transfer sends n pattern bytes from w to r and checks them by SHA-256 of
// both streams. progress, if set, is called with the bytes received so far
// after each read. On error or ctx end it closes both conns, waits for both
// sides to stop, and returns the first error.
func Transfer(ctx context.Context, w, r net.Conn, n int64, seed byte, progress func(int64)) error {
	errc := make(chan error, 2)
	var sent, got [32]byte
	go func() {
		h := sha256.New()
		_, err := io.CopyN(io.MultiWriter(w, h), NewPattern(seed), n)
		copy(sent[:], h.Sum(nil))
		errc <- err
	}()
	go func() {
		h := sha256.New()
		buf := make([]byte, 64<<10)
		var m int64
		for m < n {
			k, err := r.Read(buf[:min(int64(len(buf)), n-m)])
			h.Write(buf[:k])
			m += int64(k)
			if progress != nil {
				progress(m)
			}
			if err != nil {
				errc <- fmt.Errorf("received %d of %d bytes: %w", m, n, err)
				return
			}
		}
		copy(got[:], h.Sum(nil))
		errc <- nil
	}()
	// abort closes both conns so the sides still running stop, and waits
	// for them.
	abort := func(err error, running int) error {
		w.Close()
		r.Close()
		for ; running > 0; running-- {
			<-errc
		}
		return err
	}
	for running := 2; running > 0; {
		select {
		case err := <-errc:
			running--
			if err != nil {
				return abort(err, running)
			}
		case <-ctx.Done():
			return abort(ctx.Err(), running)
		}
	}
	if sent != got {
		return errors.New("received bytes differ from sent bytes")
	}
	return nil
}

// Throughput is a benchmark body: one stream from c to s in 64 KiB writes;
// MB/s is the figure.
func Throughput(b *testing.B, c, s net.Conn) {
	buf := make([]byte, 64<<10)
	total := int64(b.N) * int64(len(buf))
	done := make(chan int64, 1)
	go func() { n, _ := io.CopyN(io.Discard, s, total); done <- n }()
	b.SetBytes(int64(len(buf)))
	cpu0 := processCPU()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if n := <-done; n != total {
		b.Fatalf("received %d of %d bytes", n, total)
	}
	// CPU per MB of the whole process (both ends and, in-process, the
	// relay): steadier than MB/s on a machine shared with other work.
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/1e3/(float64(total)/1e6), "cpu-ms/MB")
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// RTT is a benchmark body: 64-byte ping-pong from c, echoed by s; ns/op is
// the round-trip time. A few warm-up rounds run before the timer starts.
func RTT(b *testing.B, c, s net.Conn) {
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64)
	for range 20 {
		c.Write(buf)
		io.ReadFull(c, buf)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

//go:build e2e

package e2e_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// badInput: from the proxy host (no egress rules: anyone on the Internet),
// relay-1 gets random TCP bytes, TLS without a client certificate, random
// UDP datagrams and a flood of half-open TCP connections, all at once for
// 6 s. The members must go on: their throughput during the attack is
// measured against the 6 s before, and no relay may die.
func (s *suite) badInput(t *testing.T) {
	cl := s.cl
	relay := cl.procs[0]
	target := relay1IP + ":443"
	attacker := cl.proxy
	const window = 6 * time.Second

	a0 := s.load.ackedCount()
	time.Sleep(window)
	before := float64(s.load.ackedCount()-a0) / window.Seconds()
	fds0 := fdCount(relay)

	ctx, stop := context.WithTimeout(context.Background(), window)
	defer stop()
	var wg sync.WaitGroup
	var tcpConns, tlsRefused, tlsTries, udpSent, halfOpen atomic.Int64
	garbage := make([]byte, 4096)
	rand.Read(garbage)
	// Random TCP bytes, then close.
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if c, err := attacker.DialContext(ctx, "tcp", target); err == nil {
					c.Write(garbage)
					c.Close()
					tcpConns.Add(1)
				}
			}
		}()
	}
	// TLS with no client certificate: the relay must refuse it.
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := attacker.DialContext(ctx, "tcp", target)
				if err != nil {
					continue
				}
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"memberd/1"}})
				tc.SetDeadline(time.Now().Add(2 * time.Second))
				tlsTries.Add(1)
				// With TLS 1.3 the server's refusal arrives on the first read.
				if tc.HandshakeContext(ctx) != nil {
					tlsRefused.Add(1)
				} else if _, err := tc.Read(make([]byte, 1)); err != nil {
					tlsRefused.Add(1)
				}
				tc.Close()
			}
		}()
	}
	// Random UDP datagrams to the QUIC port.
	wg.Add(1)
	go func() {
		defer wg.Done()
		var pc net.PacketConn
		if err := attacker.Do(func() (err error) { pc, err = net.ListenPacket("udp", ":0"); return err }); err != nil {
			t.Error(err)
			return
		}
		defer pc.Close()
		dst, _ := net.ResolveUDPAddr("udp", target)
		for ctx.Err() == nil {
			pc.WriteTo(garbage[:1200], dst)
			udpSent.Add(1)
			if udpSent.Load()%100 == 0 {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	// Half-open: connections that never say anything, held to the end.
	var held []net.Conn
	var heldMu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 1000 && ctx.Err() == nil; i++ {
			if c, err := attacker.DialContext(ctx, "tcp", target); err == nil {
				heldMu.Lock()
				held = append(held, c)
				heldMu.Unlock()
				halfOpen.Add(1)
			}
		}
	}()
	a1 := s.load.ackedCount()
	peakFDs := fds0
	for ctx.Err() == nil {
		peakFDs = max(peakFDs, fdCount(relay))
		time.Sleep(200 * time.Millisecond)
	}
	during := float64(s.load.ackedCount()-a1) / window.Seconds()
	wg.Wait()
	stillOpen := 0
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && os.IsTimeout(err) {
			stillOpen++ // the relay has not closed it
		}
		c.Close()
	}
	if during == 0 {
		t.Errorf("no envelope acked during the attack on %s (%.1f/s before)", relay.name, before)
	}
	if tlsTries.Load() > 0 && tlsRefused.Load() != tlsTries.Load() {
		t.Errorf("%d of %d TLS connections without a client certificate were not refused", tlsTries.Load()-tlsRefused.Load(), tlsTries.Load())
	}
	if _, ok := waitFor(10*time.Second, func() bool { return cl.ready(relay) == nil }); !ok {
		t.Errorf("%s not healthy after the attack", relay.name)
	}
	cl.checkAlive(t)
	s.record(t, "bad input to a relay (6 s)", fmt.Sprintf("%d random-TCP conns, %d TLS without cert (%d refused), %d random UDP datagrams, %d half-open conns (%d still open after 6 s; relay fds %d -> peak %d); member throughput %.1f/s before, %.1f/s during; %s",
		tcpConns.Load(), tlsTries.Load(), tlsRefused.Load(), udpSent.Load(), halfOpen.Load(), stillOpen, fds0, peakFDs, before, during, s.checkLedger(t)))
}

// fdCount is the number of open files of p's current process.
func fdCount(p *proc) int {
	pid := pidOf(p)
	if pid == 0 {
		return 0
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return len(ents)
}

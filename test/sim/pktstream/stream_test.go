package pktstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// lossyPair connects two stacks through a path that drops, duplicates,
// reorders and delays segments (seeded).
func lossyPair(seed uint64, drop, dup float64) (a, b *Stack) {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, 1))
	aa, ba := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	var stacks map[netip.Addr]*Stack
	path := func(from netip.Addr) func(dst netip.Addr, seg []byte) {
		return func(dst netip.Addr, seg []byte) {
			mu.Lock()
			x := r.Float64()
			delay := time.Duration(r.IntN(30)) * time.Millisecond
			mu.Unlock()
			if x < drop {
				return
			}
			cp := append([]byte(nil), seg...)
			n := 1
			if x < drop+dup {
				n = 2
			}
			for range n {
				time.AfterFunc(delay, func() { stacks[dst].Input(from, cp) })
			}
		}
	}
	a, b = New(aa, path(aa)), New(ba, path(ba))
	stacks = map[netip.Addr]*Stack{aa: a, ba: b}
	return a, b
}

func TestStreamOverLossyPath(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		synctest.Test(t, func(t *testing.T) {
			a, b := lossyPair(seed, 0.1, 0.05)
			ln, err := b.Listen(7050)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 300_000)
			for i := range want {
				want[i] = byte(i * 7)
			}
			done := make(chan []byte)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					t.Error(err)
					close(done)
					return
				}
				got, err := io.ReadAll(c)
				if err != nil {
					t.Error(err)
				}
				c.Write([]byte("thanks"))
				c.Close()
				done <- got
			}()
			c, err := a.Dial(context.Background(), b.addr, 7050)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(want); err != nil {
				t.Fatal(err)
			}
			c.Close()
			got := <-done
			if !bytes.Equal(got, want) {
				t.Fatalf("seed %d: got %d bytes, want %d, equal prefix %v", seed, len(got), len(want), bytes.HasPrefix(want, got))
			}
			a.Close()
			b.Close()
		})
	}
}

func TestStreamRefusedAndReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := lossyPair(1, 0, 0)
		if _, err := a.Dial(context.Background(), b.addr, 1); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial to a closed port: %v", err)
		}
		ln, _ := b.Listen(2)
		go func() {
			c, _ := ln.Accept()
			c.Write([]byte("x"))
		}()
		c, err := a.Dial(context.Background(), b.addr, 2)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		b.Close() // the peer host crashes and stays silent: GiveUp
		start := time.Now()
		c.Write([]byte("y"))
		_, err = c.Read(buf)
		t.Logf("after the peer vanished: %v after %v", err, time.Since(start))
		if err == nil {
			t.Fatal("read succeeded from a vanished peer")
		}
		a.Close()
	})
}

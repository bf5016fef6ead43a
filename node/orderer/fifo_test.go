package orderer

import (
	"context"
	"runtime"
	"testing"
	"time"
)

func TestFIFO(t *testing.T) {
	q := newFIFO[int](3)
	ctx := context.Background()
	got := make(chan []int)
	go func() {
		var out []int
		for {
			v, ok := q.pop()
			if !ok {
				got <- out
				return
			}
			out = append(out, v)
		}
	}()
	for i := range 1000 {
		if !q.push(ctx, i) {
			t.Fatal("push failed")
		}
	}
	q.close()
	out := <-got
	if len(out) != 1000 {
		t.Fatalf("popped %d of 1000", len(out))
	}
	for i, v := range out {
		if v != i {
			t.Fatalf("item %d is %d: order lost", i, v)
		}
	}

	// Full: push waits, and gives up when its ctx ends.
	q = newFIFO[int](2)
	q.push(ctx, 1)
	q.push(ctx, 2)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if q.push(cctx, 3) {
		t.Fatal("push into a full queue returned before its ctx ended")
	}
	if v, ok := q.pop(); !ok || v != 1 {
		t.Fatalf("pop = %d, %v", v, ok)
	}
	if !q.push(ctx, 3) {
		t.Fatal("push after a pop failed")
	}
	q.close()
	for _, want := range []int{2, 3} {
		if v, ok := q.pop(); !ok || v != want {
			t.Fatalf("pop after close = %d, %v; want %d", v, ok, want)
		}
	}
	if _, ok := q.pop(); ok {
		t.Fatal("pop of a closed, empty queue returned an item")
	}
}

// TestFIFOCostsLittlePerStream: a stream's queue with the default bound
// costs bytes, not the bound times the item size (a buffered channel of
// 8192 Broadcast results was about 400 KB).
func TestFIFOCostsLittlePerStream(t *testing.T) {
	type result struct {
		p   *Pending
		err error
		at  time.Time
	}
	const n = 100
	keep := make([]*fifo[result], n)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range keep {
		keep[i] = newFIFO[result](DefaultMaxPendingPerStream)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 1024 {
		t.Fatalf("an empty queue bounded at %d allocates %d bytes", DefaultMaxPendingPerStream, per)
	}
	runtime.KeepAlive(keep)
}

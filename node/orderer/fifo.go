package orderer

import (
	"context"
	"sync"
)

// fifo is a bounded first-in first-out queue from one producer to one
// consumer whose memory follows what it holds. Broadcast keeps each
// stream's admitted envelopes in one, in answer order: a buffered channel
// of MaxPendingPerStream (8192) results allocated about 400 KB for every
// stream, and Fabric's gateway and peer CLI open a stream per transaction.
type fifo[T any] struct {
	// slots holds a token per queued item: the bound. Its elements have
	// size zero, so it allocates no buffer whatever its capacity.
	slots chan struct{}
	wake  chan struct{} // capacity 1: items or closed changed

	mu     sync.Mutex
	items  []T // guarded by mu; items[head:] are queued
	head   int // guarded by mu
	closed bool
}

func newFIFO[T any](bound int) *fifo[T] {
	return &fifo[T]{slots: make(chan struct{}, bound), wake: make(chan struct{}, 1)}
}

// push queues v, waiting while the queue holds bound items; false if ctx
// ended first.
func (q *fifo[T]) push(ctx context.Context, v T) bool {
	select {
	case q.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	q.signal()
	return true
}

// close ends the queue: pop returns what is queued, then false.
func (q *fifo[T]) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

func (q *fifo[T]) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop returns the oldest item, waiting for one; false once the queue is
// closed and empty.
func (q *fifo[T]) pop() (T, bool) {
	var zero T
	for {
		q.mu.Lock()
		if q.head < len(q.items) {
			v := q.items[q.head]
			q.items[q.head] = zero // let it be collected
			q.head++
			if q.head == len(q.items) {
				q.items, q.head = q.items[:0], 0
			}
			q.mu.Unlock()
			<-q.slots
			return v, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return zero, false
		}
		<-q.wake
	}
}

package relay

import (
	"sync"

	"github.com/memberd/memberd/relay/wire"
)

// fairQueue is a link's bounded send queue for data frames, fair between
// the sources whose packets it carries (issue #11): one FIFO per source
// (the member a forwarded packet came from; "" for the link's own frames),
// served by deficit round robin in bytes, so that a member sending at its
// full rate to one destination gets no more of that destination's link
// than any other member with packets waiting. Before, the queue was one
// FIFO: a flooding member kept it full, and another member's packets to
// the same destination waited behind the whole queue or were dropped with
// the flood's.
//
// Memory stays bounded by limit frames and by limit × boundFrame bytes in
// all (a queue of limit frames of the tunnel's former largest packet:
// with 16 KiB packets, issue #15, a bound in frames alone would have
// quadrupled what a full queue holds). The bytes are the frames' capacity,
// not their length: what a queued frame pins is its whole buffer (newFrame
// sizes them by class, so a heartbeat does not pin 16 KiB). When full, the
// source with the most frames queued loses one, as often as needed: the
// new frame if it is that source's own or no other source has two, else
// that source's newest (pushed out), so a flood cannot take the room of a
// quieter source either. Whether pushing out makes room is decided before
// anything is pushed out (room): when it does not, only the new frame is
// dropped.
type fairQueue struct {
	limit    int
	maxBytes int           // limit × boundFrame
	quantum  int           // bytes a source may send per round, at least one frame
	ready    chan struct{} // poked on every push (shared with the link's other queue)

	mu     sync.Mutex
	n      int                  // frames queued, all sources
	bytes  int                  // their bytes, counted in capacity (the memory they pin)
	flows  map[string]*fairFlow // sources with frames queued
	active ring[*fairFlow]      // round-robin order; the front has the turn
}

// fairFlow is one source's frames in a fairQueue.
type fairFlow struct {
	key     string
	frames  ring[[]byte]
	deficit int  // bytes this source may still send in its turn
	turn    bool // at the front of active, its quantum added
	out     int  // its newest frames to push out (fairQueue.room), 0 otherwise
}

// fairQuantum is the bytes one source may send per round: a 4 KiB packet
// frame, about 3 of the tunnel's 1.3 KB packets; a source whose head frame
// is larger (up to MaxPacketSizeTCP) sends it once its deficit has grown
// over the rounds it waited.
const fairQuantum = boundFrame

// boundFrame is the frame size a queue's limit in frames was set for: a
// packet frame of 4096 bytes, the tunnel's largest until issue #15 made it
// MaxPacketSizeTCP.
const boundFrame = 4096 + wire.ForwardOverhead

func newFairQueue(limit int, ready chan struct{}) *fairQueue {
	limit = max(limit, 1)
	return &fairQueue{limit: limit, maxBytes: limit * boundFrame, quantum: fairQuantum, ready: ready, flows: map[string]*fairFlow{}}
}

// push queues frame for source key. It returns the frames that did not
// fit (frame itself, or other sources' newest, pushed out), or nil; the
// caller counts and recycles them. Other sources' frames are pushed out
// only when that makes room for frame: when it cannot (room), frame alone
// is dropped and the queue is left as it was.
func (q *fairQueue) push(key string, frame []byte) (dropped [][]byte) {
	q.mu.Lock()
	f := q.flows[key]
	planned, ok := q.room(f, cap(frame))
	if !ok {
		q.mu.Unlock()
		return [][]byte{frame}
	}
	for i := 0; planned > 0 && i < q.active.len(); i++ {
		g := q.active.at(i)
		for ; g.out > 0; g.out-- {
			planned--
			out := g.frames.popBack()
			q.n--
			q.bytes -= cap(out)
			dropped = append(dropped, out)
		}
	}
	if f == nil {
		f = &fairFlow{key: key}
		q.flows[key] = f
		q.active.pushBack(f)
	}
	f.frames.pushBack(frame)
	q.n++
	q.bytes += cap(frame)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return dropped
}

// room plans the push-out that makes room for a frame of size bytes (its
// capacity, see bytes) from flow f (nil: a source with nothing queued),
// without changing the queue: while the queue would be over its bound in
// frames or bytes, the flow with the most frames left loses its newest
// (counted in its out). ok is false, with every out back at 0, when that
// flow is f itself (a tie counts as f) or has only one frame left, so a
// source keeps its last frame (a flow emptied here would stay in active
// with nothing to send); true when the planned frames counted in out make
// room. q.mu is held.
func (q *fairQueue) room(f *fairFlow, size int) (planned int, ok bool) {
	n, bytes := q.n, q.bytes
	for n > 0 && (n >= q.limit || bytes+size > q.maxBytes) {
		longest, most := f, 0
		if f != nil {
			most = f.frames.len()
		}
		for i := range q.active.len() {
			if g := q.active.at(i); g.frames.len()-g.out > most {
				longest, most = g, g.frames.len()-g.out
			}
		}
		if longest == f || most < 2 {
			for i := 0; planned > 0 && i < q.active.len(); i++ {
				g := q.active.at(i)
				planned -= g.out
				g.out = 0
			}
			return 0, false
		}
		longest.out++
		planned++
		n--
		bytes -= cap(longest.frames.at(most - 1))
	}
	return planned, true
}

// pop returns the next frame by deficit round robin, or nil when empty.
func (q *fairQueue) pop() []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.active.len() > 0 {
		f := q.active.at(0)
		if !f.turn {
			f.deficit += q.quantum
			f.turn = true
		}
		if head := f.frames.at(0); len(head) <= f.deficit {
			f.deficit -= len(head)
			f.frames.popFront()
			q.n--
			q.bytes -= cap(head)
			if f.frames.len() == 0 { // an idle source keeps no credit
				delete(q.flows, f.key)
				q.active.popFront()
			}
			return head
		}
		// Its turn is over; the deficit left counts in its next one.
		f.turn = false
		q.active.pushBack(q.active.popFront())
	}
	return nil
}

// len returns the frames queued.
func (q *fairQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// drain removes every queued frame, calling fn for each.
func (q *fairQueue) drain(fn func([]byte)) {
	q.mu.Lock()
	var all [][]byte
	for q.active.len() > 0 {
		f := q.active.popFront()
		for f.frames.len() > 0 {
			all = append(all, f.frames.popFront())
		}
	}
	q.flows, q.n, q.bytes = map[string]*fairFlow{}, 0, 0
	q.mu.Unlock()
	for _, b := range all {
		fn(b)
	}
}

// ring is a FIFO that reuses its buffer (a slice re-sliced from the front
// reallocates as it goes), growing by doubling.
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

// at returns the i-th element from the front; 0 <= i < len.
func (r *ring[T]) at(i int) T { return r.buf[(r.head+i)%len(r.buf)] }

func (r *ring[T]) pushBack(v T) {
	if r.n == len(r.buf) {
		buf := make([]T, max(8, 2*len(r.buf)))
		for i := range r.n {
			buf[i] = r.at(i)
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

// popFront removes and returns the front element; len must be > 0.
func (r *ring[T]) popFront() T {
	var zero T
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return v
}

// popBack removes and returns the back element; len must be > 0.
func (r *ring[T]) popBack() T {
	var zero T
	i := (r.head + r.n - 1) % len(r.buf)
	v := r.buf[i]
	r.buf[i] = zero
	r.n--
	return v
}

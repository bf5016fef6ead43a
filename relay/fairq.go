package relay

import "sync"

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
// Memory stays bounded by limit frames in all. When full, the source with
// the most frames queued loses one: the new frame if it is that source's
// own, else that source's newest (pushed out), so a flood cannot take the
// room of a quieter source either.
type fairQueue struct {
	limit   int
	quantum int           // bytes a source may send per round, at least one frame
	ready   chan struct{} // poked on every push (shared with the link's other queue)

	mu     sync.Mutex
	n      int                  // frames queued, all sources
	flows  map[string]*fairFlow // sources with frames queued
	active []*fairFlow          // round-robin order; active[0] has the turn
}

// fairFlow is one source's frames in a fairQueue.
type fairFlow struct {
	key     string
	frames  [][]byte
	deficit int  // bytes this source may still send in its turn
	turn    bool // active[0] and its quantum added
}

// fairQuantum is the bytes one source may send per round: one full-size
// frame (pooledFrame), about 3 of the tunnel's 1.3 KB packets.
const fairQuantum = pooledFrame

func newFairQueue(limit int, ready chan struct{}) *fairQueue {
	return &fairQueue{limit: max(limit, 1), quantum: fairQuantum, ready: ready, flows: map[string]*fairFlow{}}
}

// push queues frame for source key. It returns the frame that did not fit
// (frame itself, or another source's newest, pushed out), or nil; the
// caller counts and recycles it.
func (q *fairQueue) push(key string, frame []byte) (dropped []byte) {
	q.mu.Lock()
	f := q.flows[key]
	if q.n >= q.limit {
		longest := f
		for _, g := range q.active {
			if longest == nil || len(g.frames) > len(longest.frames) {
				longest = g
			}
		}
		if longest == f {
			q.mu.Unlock()
			return frame
		}
		last := len(longest.frames) - 1
		dropped = longest.frames[last]
		longest.frames[last] = nil
		longest.frames = longest.frames[:last]
		q.n--
		// longest had more frames than f (at least 2): it stays active.
	}
	if f == nil {
		f = &fairFlow{key: key}
		q.flows[key] = f
		q.active = append(q.active, f)
	}
	f.frames = append(f.frames, frame)
	q.n++
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return dropped
}

// pop returns the next frame by deficit round robin, or nil when empty.
func (q *fairQueue) pop() []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.active) > 0 {
		f := q.active[0]
		if !f.turn {
			f.deficit += q.quantum
			f.turn = true
		}
		head := f.frames[0]
		if len(head) <= f.deficit {
			f.deficit -= len(head)
			f.frames[0] = nil
			f.frames = f.frames[1:]
			q.n--
			if len(f.frames) == 0 { // an idle source keeps no credit
				delete(q.flows, f.key)
				q.active[0] = nil
				q.active = q.active[1:]
			}
			return head
		}
		// Its turn is over; the deficit left counts in its next one.
		f.turn = false
		q.active[0] = nil
		q.active = append(q.active[1:], f)
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
	for _, f := range q.active {
		all = append(all, f.frames...)
	}
	q.active, q.flows, q.n = nil, map[string]*fairFlow{}, 0
	q.mu.Unlock()
	for _, b := range all {
		fn(b)
	}
}

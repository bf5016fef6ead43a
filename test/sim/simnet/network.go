// Package simnet is a simulated, seeded stream network for whole-consortium
// tests in one process, meant to run inside a testing/synctest bubble so
// that its delays and every timer of the code under test run on virtual
// time.
//
// Nodes are addressed by name. A connection is a pair of in-memory streams;
// each direction has a delivery goroutine that cuts the bytes into frames
// (Config.Split; one frame per Write without it) and, for the frames Split
// marks faultable, drops, duplicates, reorders and delays them with
// decisions drawn from one seeded math/rand source. Partitions come in two
// kinds: Reset closes the connections across them and refuses dials (a
// crashed host, a firewall that rejects); Silent keeps connections open but
// delivers nothing and lets dials hang until their context ends (a firewall
// that drops, a vanished relay path).
//
// Determinism: every decision comes from the seeded source, but which
// goroutine draws next depends on the scheduler, so one seed gives the same
// fault rates and schedule shape, not necessarily the same interleaving.
package simnet

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"
)

// Faults are per-frame probabilities and the delay range.
//
// A stream network stands for TCP, which never loses, duplicates or
// reorders bytes on a live connection: what TCP shows of a lossy path is
// delay (retransmissions, Spike) and, when it gives up, a reset (Drop:
// the frame is lost and the connection reset with it). Dup and Reorder
// break that contract on purpose (a hostile or buggy transport): raft
// itself tolerates them, but a sender that counts on TCP does not, so
// they are off unless asked for.
type Faults struct {
	Drop               float64       // per faultable frame: lose it and reset the connection
	Dup, Reorder       float64       // per faultable frame, beyond TCP (see above)
	Spike              float64       // per frame: a retransmission stall of up to SpikeMax
	SpikeMax           time.Duration // default 1s
	MinDelay, MaxDelay time.Duration // each frame's one-way delay
}

// Config configures a Network.
type Config struct {
	Seed   uint64
	Faults Faults
	// Split returns the length of the first complete frame in b (0: not
	// complete yet) and whether faults may hit it. nil: each Write is one
	// frame, never faulted (delay only).
	Split func(b []byte) (n int, faultable bool)
	// SilentStalls: a Silent partition holds the frames of open
	// connections until it heals (a TCP connection stalls: its segments
	// are retransmitted until they get through) instead of dropping them.
	// Needed for streams that are not self-delimiting frames, such as TLS
	// records: a gap in them breaks the connection with bad_record_mac,
	// and crypto/tls then sends its alert under the write lock a blocked
	// writer holds (a sync.Mutex, which synctest does not count as
	// durably blocked: virtual time stopped for good).
	SilentStalls bool
	// UnboundedWrites: a connection's Write never blocks (an unbounded
	// send buffer). crypto/tls holds its write lock (a sync.Mutex) across
	// the underlying Write, and a second writer (relay.link's GOAWAY on
	// close, an alert) then waits on that mutex, which synctest does not
	// count as durably blocked: with the first Write blocked on a stalled
	// link, virtual time stopped for good (the write deadline that would
	// free it never fired). Found with the relay links of the tunnel
	// simulation: seed 6 (make sim SEED=4) hung at 0% CPU, twice.
	UnboundedWrites bool
	// Observe, if set, sees every frame delivered, from the dialer's or
	// the listener's node to the other, with the time its last byte was
	// written; it must not keep frame.
	Observe func(from, to string, sent time.Time, frame []byte)
}

// Stats count what the network did.
type Stats struct {
	Frames, Dropped, Duplicated, Reordered, Spikes, Blackholed, Resets, Dials, Refused uint64
}

// Network is the simulated network. Its methods are safe for concurrent use.
type Network struct {
	cfg Config

	mu        sync.Mutex // guards everything below
	rng       *rand.Rand
	faults    Faults
	listeners map[string]*listener
	cut       map[link]Mode    // partitioned pairs (a < b)
	conns     map[*conn]uint64 // the order they were made in
	connSeq   uint64
	stats     Stats
}

type link struct{ a, b string }

func linkOf(x, y string) link {
	if x > y {
		x, y = y, x
	}
	return link{x, y}
}

type Mode int

func (m Mode) String() string {
	switch m {
	case Reset:
		return "reset"
	case Silent:
		return "silent"
	}
	return "connected"
}

const (
	// Reset partitions close connections and refuse dials.
	Reset Mode = iota + 1
	// Silent partitions deliver nothing and let dials hang.
	Silent
)

// New returns an empty network.
func New(cfg Config) *Network {
	return &Network{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x5eed)), faults: cfg.Faults,
		listeners: map[string]*listener{}, cut: map[link]Mode{}, conns: map[*conn]uint64{}}
}

// SetFaults changes the fault rates from now on.
func (nw *Network) SetFaults(f Faults) {
	nw.mu.Lock()
	nw.faults = f
	nw.mu.Unlock()
}

// Stats returns the counters so far.
func (nw *Network) Stats() Stats {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.stats
}

// Listen returns the listener of node name, replacing an earlier one.
func (nw *Network) Listen(name string) net.Listener {
	l := &listener{nw: nw, name: name, accept: make(chan *conn), closed: make(chan struct{})}
	nw.mu.Lock()
	nw.listeners[name] = l
	nw.mu.Unlock()
	return l
}

func (nw *Network) unlisten(l *listener) {
	nw.mu.Lock()
	if nw.listeners[l.name] == l {
		delete(nw.listeners, l.name)
	}
	nw.mu.Unlock()
}

// Dialer returns the dialer of node from; addresses are node names.
func (nw *Network) Dialer(from string) *Dialer { return &Dialer{nw: nw, from: from} }

// Dialer dials by node name (raftlog.Dialer).
type Dialer struct {
	nw   *Network
	from string
}

// DialContext connects to the node named address.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	nw := d.nw
	nw.mu.Lock()
	nw.stats.Dials++
	m := nw.cut[linkOf(d.from, address)]
	l := nw.listeners[address]
	nw.mu.Unlock()
	switch {
	case m == Silent:
		<-ctx.Done() // the SYN is lost
		return nil, &net.OpError{Op: "dial", Net: "sim", Err: errTimeout}
	case m == Reset || l == nil:
		nw.mu.Lock()
		nw.stats.Refused++
		nw.mu.Unlock()
		return nil, fmt.Errorf("%w: %s -> %s", ErrUnreachable, d.from, address)
	}
	up, down := newStream(d.from, address), newStream(address, d.from)
	if nw.cfg.UnboundedWrites {
		for _, st := range []*stream{up, down} {
			st.unbounded, st.qsig = true, make(chan struct{}, 1)
		}
	}
	up.peer, down.peer = down, up
	cc := &conn{local: d.from, remote: address, rd: down, wr: up, rdl: newDeadline(), wdl: newDeadline(), closed: make(chan struct{})}
	sc := &conn{local: address, remote: d.from, rd: up, wr: down, rdl: newDeadline(), wdl: newDeadline(), closed: make(chan struct{})}
	select {
	case l.accept <- sc:
	case <-l.closed:
		return nil, fmt.Errorf("%w: %s -> %s (listener closed)", ErrUnreachable, d.from, address)
	case <-ctx.Done():
		return nil, &net.OpError{Op: "dial", Net: "sim", Err: ctx.Err()}
	}
	nw.mu.Lock()
	nw.connSeq += 2
	nw.conns[cc], nw.conns[sc] = nw.connSeq-1, nw.connSeq
	nw.mu.Unlock()
	go nw.deliver(up)
	go nw.deliver(down)
	if nw.cfg.UnboundedWrites { // only now: a failed dial leaves no pump behind
		go up.pump()
		go down.pump()
	}
	return cc, nil
}

// Partition cuts the link between a and b in mode m.
func (nw *Network) Partition(a, b string, m Mode) {
	nw.mu.Lock()
	nw.cut[linkOf(a, b)] = m
	nw.mu.Unlock()
	if m == Reset {
		nw.resetWhere(func(c *conn) bool { return linkOf(c.local, c.remote) == linkOf(a, b) })
	}
}

// resetWhere resets the connections for which match is true.
func (nw *Network) resetWhere(match func(c *conn) bool) {
	nw.mu.Lock()
	var victims []*conn
	for c := range nw.conns {
		if match(c) {
			victims = append(victims, c)
		}
	}
	// In the order they were made, not the map's (random) order: the
	// resets wake their readers and writers in the same order every run.
	slices.SortFunc(victims, func(a, b *conn) int { return cmp.Compare(nw.conns[a], nw.conns[b]) })
	nw.stats.Resets += uint64(len(victims))
	nw.mu.Unlock()
	for _, c := range victims {
		c.rd.reset()
		c.wr.reset()
	}
}

// Heal restores the link between a and b.
func (nw *Network) Heal(a, b string) {
	nw.mu.Lock()
	delete(nw.cut, linkOf(a, b))
	nw.mu.Unlock()
}

// HealAll restores every link.
func (nw *Network) HealAll() {
	nw.mu.Lock()
	clear(nw.cut)
	nw.mu.Unlock()
}

// Cut reports the partition Mode between a and b (0: connected).
func (nw *Network) Cut(a, b string) Mode {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.cut[linkOf(a, b)]
}

// Kill resets every connection of node name (a crashed host's peers see
// their connections reset).
func (nw *Network) Kill(name string) {
	nw.resetWhere(func(c *conn) bool { return c.local == name || c.remote == name })
}

// Rand draws from the network's seeded source (for a harness that wants
// its decisions in the same stream).
func (nw *Network) Rand(f func(r *rand.Rand)) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	f(nw.rng)
}

// decision is what happens to one frame.
type decision struct {
	drop, dup, reorder, blackhole bool
	delay                         time.Duration
}

func (nw *Network) decide(s *stream, faultable bool) decision {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.stats.Frames++
	var d decision
	f := nw.faults
	if f.MaxDelay > f.MinDelay {
		d.delay = f.MinDelay + time.Duration(nw.rng.Int64N(int64(f.MaxDelay-f.MinDelay)))
	} else {
		d.delay = f.MinDelay
	}
	if f.Spike > 0 && nw.rng.Float64() < f.Spike {
		spike := f.SpikeMax
		if spike <= 0 {
			spike = time.Second
		}
		d.delay += time.Duration(nw.rng.Int64N(int64(spike)))
		nw.stats.Spikes++
	}
	if nw.cut[linkOf(s.from, s.to)] == Silent {
		d.blackhole = true
		nw.stats.Blackholed++
		return d
	}
	if !faultable {
		return d
	}
	switch r := nw.rng.Float64(); {
	case r < f.Drop:
		d.drop = true
		nw.stats.Dropped++
	case r < f.Drop+f.Dup:
		d.dup = true
		nw.stats.Duplicated++
	case r < f.Drop+f.Dup+f.Reorder:
		d.reorder = true
		nw.stats.Reordered++
	}
	return d
}

func (nw *Network) forget(s *stream) {
	nw.mu.Lock()
	for c := range nw.conns {
		if c.wr == s {
			delete(nw.conns, c)
		}
		if c.rd == s {
			delete(nw.conns, c)
		}
	}
	nw.mu.Unlock()
}

// deliver moves s's bytes from in to out, frame by frame, with the faults.
func (nw *Network) deliver(s *stream) {
	defer close(s.done)
	defer close(s.out)
	defer nw.forget(s)
	var pending, held []byte // held: a frame kept back to be reordered
	var wrote time.Time      // when the last segment in pending was written
	last := time.Now()       // delivery time of the previous frame (FIFO)
	emit := func(b []byte) bool {
		select {
		case s.out <- b:
			return true
		case <-s.abort:
			return false
		}
	}
	for {
		var seg segment
		select {
		case seg = <-s.in:
		case <-s.abort:
			return
		case <-s.eof:
			// Deliver what the writer put in before closing.
			select {
			case seg = <-s.in:
			default:
				if held != nil {
					emit(held)
				}
				if len(pending) > 0 {
					emit(pending)
				}
				return
			}
		}
		pending = append(pending, seg.b...)
		wrote = seg.at
		for len(pending) > 0 {
			n, faultable := len(pending), false
			if nw.cfg.Split != nil {
				if n, faultable = nw.cfg.Split(pending); n == 0 {
					break
				}
			}
			frame := append([]byte(nil), pending[:n]...)
			pending = pending[n:]
			d := nw.decide(s, faultable)
			// The delay counts from the write, not from when this
			// goroutine got to the frame: frames in flight overlap, as on
			// a real path. (Counting from now serialised them: a link
			// carried one frame per delay, ~40 a second at 25ms, and the
			// relay links, with their pings, queued for seconds.)
			at := wrote.Add(d.delay)
			if at.Before(last) {
				at = last
			}
			if wait := time.Until(at); wait > 0 {
				select {
				case <-time.After(wait):
				case <-s.abort:
					return
				}
			}
			last = at
			if d.blackhole && nw.cfg.SilentStalls {
				// Hold the frame (and the stream) until the link heals.
				for nw.Cut(s.from, s.to) == Silent {
					select {
					case <-time.After(50 * time.Millisecond):
					case <-s.abort:
						return
					}
				}
				last = time.Now()
				d.blackhole = false
			}
			switch {
			case d.blackhole:
				continue
			case d.drop:
				s.reset()
				s.peer.reset()
				return
			case d.reorder && held == nil:
				held = frame
				continue
			}
			if nw.cfg.Observe != nil {
				nw.cfg.Observe(s.from, s.to, wrote, frame)
			}
			if !emit(frame) {
				return
			}
			if d.dup && !emit(frame) {
				return
			}
			if held != nil {
				if !emit(held) {
					return
				}
				held = nil
			}
		}
	}
}

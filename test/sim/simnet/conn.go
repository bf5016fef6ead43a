package simnet

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// addr is a node name as a net.Addr.
type addr string

func (a addr) Network() string { return "sim" }
func (a addr) String() string  { return string(a) }

// deadline is a settable deadline: wait() is closed once it has passed.
// A zero time means none.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{} // closed when the deadline passes
}

func newDeadline() *deadline { return &deadline{ch: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.ch // the timer fired (or is firing): wait for it, then re-arm
	}
	d.timer = nil
	select {
	case <-d.ch:
		d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	if dur := time.Until(t); dur <= 0 {
		close(d.ch)
		return
	}
	ch := d.ch
	d.timer = time.AfterFunc(time.Until(t), func() { close(ch) })
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

// errTimeout is returned when a deadline passes; it says Timeout() like
// the net package's errors.
var errTimeout error = &timeoutError{}

type timeoutError struct{}

func (*timeoutError) Error() string   { return "simnet: i/o timeout" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }
func (*timeoutError) Unwrap() error   { return os.ErrDeadlineExceeded }

var errReset = &net.OpError{Op: "read", Net: "sim", Err: syscall.ECONNRESET}

// segment is one Write's bytes on its way.
type segment struct {
	b  []byte
	at time.Time // when written
}

// stream is one direction of a connection: the writer puts segments into
// in; the link's delivery goroutine (Network.deliver) applies the faults
// and puts bytes into out, which the reader reads.
type stream struct {
	from, to string
	peer     *stream // the other direction of the connection
	in       chan segment
	out      chan []byte
	eof      chan struct{} // closed by the writer's Close: deliver the rest, then EOF
	eofOnce  sync.Once
	abort    chan struct{} // closed on reset or the reader's Close: drop everything
	abOnce   sync.Once
	done     chan struct{} // closed when the delivery goroutine has stopped (out is then final)

	// unbounded (Config.UnboundedWrites): Write queues in q and a pump
	// goroutine feeds in, so that Write never blocks.
	unbounded bool
	qmu       sync.Mutex
	q         []segment
	qeof      bool          // closeWrite called: close eof once q is drained
	qsig      chan struct{} // cap 1: q or qeof changed
}

// pump moves the queued segments into in, then closes eof if asked.
func (s *stream) pump() {
	for {
		s.qmu.Lock()
		q, eof := s.q, s.qeof
		s.q = nil
		s.qmu.Unlock()
		for _, seg := range q {
			select {
			case s.in <- seg:
			case <-s.abort:
				return
			}
		}
		if len(q) > 0 {
			continue
		}
		if eof {
			s.eofOnce.Do(func() { close(s.eof) })
			return
		}
		select {
		case <-s.qsig:
		case <-s.abort:
			return
		}
	}
}

func (s *stream) enqueue(seg segment) {
	s.qmu.Lock()
	s.q = append(s.q, seg)
	s.qmu.Unlock()
	select {
	case s.qsig <- struct{}{}:
	default:
	}
}

func newStream(from, to string) *stream {
	return &stream{from: from, to: to, in: make(chan segment, 64), out: make(chan []byte, 64),
		eof: make(chan struct{}), abort: make(chan struct{}), done: make(chan struct{})}
}

func (s *stream) closeWrite() {
	if s.unbounded {
		s.qmu.Lock()
		s.qeof = true
		s.qmu.Unlock()
		select {
		case s.qsig <- struct{}{}:
		default:
		}
		return
	}
	s.eofOnce.Do(func() { close(s.eof) })
}
func (s *stream) reset() { s.abOnce.Do(func() { close(s.abort) }) }

// conn is one end of a simulated TCP connection.
type conn struct {
	local, remote string
	rd, wr        *stream
	rbuf          []byte
	rdl, wdl      *deadline
	closed        chan struct{}
	closeOnce     sync.Once
	rmu, wmu      sync.Mutex
}

var _ net.Conn = (*conn)(nil)

func (c *conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.rbuf) == 0 {
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		default:
		}
		select {
		case b, ok := <-c.rd.out:
			if !ok {
				select {
				case <-c.rd.abort:
					return 0, errReset
				default:
					return 0, io.EOF
				}
			}
			c.rbuf = b
		case <-c.rd.abort:
			return 0, errReset
		case <-c.closed:
			return 0, net.ErrClosed
		case <-c.rdl.wait():
			return 0, errTimeout
		}
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	case <-c.wr.abort:
		return 0, &net.OpError{Op: "write", Net: "sim", Err: syscall.EPIPE}
	case <-c.wr.eof:
		return 0, net.ErrClosed
	default:
	}
	if c.wr.unbounded {
		c.wr.enqueue(segment{b: append([]byte(nil), p...), at: time.Now()})
		return len(p), nil
	}
	select {
	case c.wr.in <- segment{b: append([]byte(nil), p...), at: time.Now()}:
		return len(p), nil
	case <-c.closed:
		return 0, net.ErrClosed
	case <-c.wr.abort:
		return 0, &net.OpError{Op: "write", Net: "sim", Err: syscall.EPIPE}
	case <-c.wdl.wait():
		return 0, errTimeout
	}
}

// Close closes this end: the peer reads what was written, then EOF; its
// writes fail.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.wr.closeWrite()
		c.rd.reset()
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return addr(c.local) }
func (c *conn) RemoteAddr() net.Addr { return addr(c.remote) }

func (c *conn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}
func (c *conn) SetReadDeadline(t time.Time) error  { c.rdl.set(t); return nil }
func (c *conn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// listener accepts the connections dialed to one node.
type listener struct {
	nw     *Network
	name   string
	accept chan *conn
	closed chan struct{}
	once   sync.Once
}

var _ net.Listener = (*listener)(nil)

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.nw.unlisten(l)
	})
	return nil
}

func (l *listener) Addr() net.Addr { return addr(l.name) }

// ErrUnreachable: a dial to a node that does not listen, or across a
// partition in reset mode.
var ErrUnreachable = errors.New("simnet: connection refused")

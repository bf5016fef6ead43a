package appliance

// The raft port of the ledger, bound once for the appliance's life.
//
// 'osnadmin channel remove' closes the channel's node, and with it the
// listener raft was given; a following 'join' must listen again. On the
// tunnel (gVisor netstack) that second bind failed with "port is in use"
// for 60 s: the connections raft had accepted on that port and closed sit
// in TIME_WAIT for netstack's default 60 s, and netstack, as Linux without
// SO_REUSEADDR, refuses to bind a port they hold (measured: the bind
// succeeded 60.1 s after the remove). So the appliance binds the raft port
// once and hands each node it opens a view of it (portListener.view); a
// view's Close releases it for the next node without closing the socket.

import (
	"errors"
	"net"
	"sync"
)

// portListener accepts on one listener until Close and passes each
// connection to the open view, if any; with none open (a removed
// channel), it closes the connection at once, as a closed port would.
type portListener struct {
	ln   net.Listener  // immutable
	done chan struct{} // closed when the accept loop has ended
	err  error         // why it ended; written before done is closed

	mu  sync.Mutex
	cur *listenerView // guarded by mu: the open view, nil if none
}

// errViewOpen: a node already listens on this port.
var errViewOpen = errors.New("a node already listens on this port")

func newPortListener(ln net.Listener) *portListener {
	p := &portListener{ln: ln, done: make(chan struct{})}
	go p.run()
	return p
}

func (p *portListener) run() {
	defer close(p.done)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			p.err = err
			return // the listener is closed (Close) or broken: each view's Accept now fails
		}
		p.mu.Lock()
		v := p.cur
		p.mu.Unlock()
		if v == nil {
			c.Close()
			continue
		}
		select {
		case v.conns <- c:
		case <-v.closed:
			c.Close()
		}
	}
}

// view opens the listener for one node; it fails while another view is open.
func (p *portListener) view() (net.Listener, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil {
		return nil, errViewOpen
	}
	select {
	case <-p.done:
		return nil, net.ErrClosed
	default:
	}
	v := &listenerView{p: p, conns: make(chan net.Conn), closed: make(chan struct{})}
	p.cur = v
	return v, nil
}

// Close closes the socket and waits for the accept loop. Idempotent.
func (p *portListener) Close() error {
	err := p.ln.Close()
	<-p.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// listenerView is the net.Listener a node is given.
type listenerView struct {
	p      *portListener
	conns  chan net.Conn // unbuffered: the accept loop hands over or gives up on closed
	closed chan struct{}
	once   sync.Once
}

var _ net.Listener = (*listenerView)(nil)

// Accept implements net.Listener.
func (v *listenerView) Accept() (net.Conn, error) {
	select {
	case c := <-v.conns:
		return c, nil
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.p.done:
		return nil, v.p.err
	}
}

// Close releases the port for the next view; the socket stays bound.
func (v *listenerView) Close() error {
	v.once.Do(func() {
		close(v.closed)
		v.p.mu.Lock()
		if v.p.cur == v {
			v.p.cur = nil
		}
		v.p.mu.Unlock()
	})
	return nil
}

// Addr implements net.Listener.
func (v *listenerView) Addr() net.Addr { return v.p.ln.Addr() }

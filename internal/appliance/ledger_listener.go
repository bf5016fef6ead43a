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
//
// The same port serves every channel (ledger.channels): each node has the
// view of its channel, and an inbound connection goes to the view of the
// cluster its raft hello names (raftlog.ReadHello), with the hello replayed.
// Dialers send the hello they always sent, so a peer that orders one
// channel needs no change.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memberd/memberd/node/raftlog"
)

// helloTimeout bounds the wait for an inbound raft connection's hello.
const helloTimeout = 10 * time.Second

// maxPendingHellos bounds the inbound raft connections whose hello is
// awaited; one beyond is closed at once (portListener.overflow counts them).
const maxPendingHellos = 64

// portListener accepts on one listener until Close and passes each
// connection to the open view of the channel its hello names, if any; with
// none open (a removed channel, or one this member does not order), it
// closes the connection, as a closed port would.
type portListener struct {
	ln   net.Listener  // immutable
	log  *slog.Logger  // may be nil
	done chan struct{} // closed when the accept loop has ended
	err  error         // why it ended; written before done is closed

	routing sync.WaitGroup // route goroutines

	mu      sync.Mutex
	views   map[string]*listenerView // guarded by mu: the open view of each channel
	pending map[net.Conn]bool        // guarded by mu: connections whose hello is awaited
	closed  bool                     // guarded by mu: Close was called

	overflow atomic.Uint64 // connections closed because maxPendingHellos were awaited
	panics   atomic.Uint64 // panics in route, each closing its connection only
}

// errViewOpen: a node already listens on this port.
var errViewOpen = errors.New("a node already listens on this port")

func newPortListener(ln net.Listener, log *slog.Logger) *portListener {
	p := &portListener{ln: ln, log: log, done: make(chan struct{}), views: map[string]*listenerView{}, pending: map[net.Conn]bool{}}
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
		if p.closed {
			p.mu.Unlock()
			c.Close()
			continue
		}
		if len(p.pending) >= maxPendingHellos {
			p.mu.Unlock()
			p.overflow.Add(1)
			if p.log != nil {
				p.log.Debug("raft connection closed: too many awaiting their hello", "remote", c.RemoteAddr(), "pending", maxPendingHellos)
			}
			c.Close()
			continue
		}
		p.pending[c] = true
		p.routing.Add(1)
		p.mu.Unlock()
		go p.route(c)
	}
}

// route reads c's raft hello and hands c to the view of the channel it
// names, the hello replayed in front of the rest.
func (p *portListener) route(c net.Conn) {
	defer p.routing.Done()
	defer p.survive(c)
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	cluster, raw, err := raftlog.ReadHello(c)
	c.SetReadDeadline(time.Time{})
	p.mu.Lock()
	delete(p.pending, c)
	p.mu.Unlock()
	if err != nil {
		if p.log != nil {
			p.log.Debug("raft connection without a hello: closed", "remote", c.RemoteAddr(), "err", err)
		}
		c.Close()
		return
	}
	p.mu.Lock()
	v := p.views[cluster]
	p.mu.Unlock()
	if v == nil {
		if p.log != nil {
			p.log.Debug("raft connection for a channel this node does not order: closed", "remote", c.RemoteAddr(), "channel", cluster)
		}
		// The dialer's log says why (as raftlog's own reject would).
		c.SetWriteDeadline(time.Now().Add(helloTimeout))
		raftlog.WriteReject(c, fmt.Sprintf("channel %q is not ordered by this node (not open here: not a consenter, removed, or dropped)", cluster))
		c.Close()
		return
	}
	rc := &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(raw), c)}
	select {
	case v.conns <- rc:
	case <-v.closed:
		c.Close()
	case <-p.done:
		c.Close()
	}
}

// survive, deferred in route, turns a panic there into a closed
// connection: logged with its stack and counted (portListener.panics);
// the process and the other connections go on.
func (p *portListener) survive(c net.Conn) {
	v := recover()
	if v == nil {
		return
	}
	p.panics.Add(1)
	p.mu.Lock()
	delete(p.pending, c)
	p.mu.Unlock()
	c.Close()
	if p.log != nil {
		p.log.Error("panic routing a raft connection; closed that connection only",
			"remote", c.RemoteAddr(), "panic", v, "stack", string(debug.Stack()))
	}
}

// replayConn is a connection whose first bytes, already read, are read
// again.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// view opens the listener for channel's node; it fails while another view
// of that channel is open.
func (p *portListener) view(channel string) (net.Listener, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.views[channel] != nil {
		return nil, errViewOpen
	}
	select {
	case <-p.done:
		return nil, net.ErrClosed
	default:
	}
	v := &listenerView{p: p, channel: channel, conns: make(chan net.Conn), closed: make(chan struct{})}
	p.views[channel] = v
	return v, nil
}

// Close closes the socket and waits for the accept loop and the
// connections being routed. Idempotent.
func (p *portListener) Close() error {
	err := p.ln.Close()
	<-p.done
	p.mu.Lock()
	p.closed = true
	for c := range p.pending {
		c.Close() // ends its ReadHello
	}
	p.mu.Unlock()
	p.routing.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// listenerView is the net.Listener a node is given.
type listenerView struct {
	p       *portListener
	channel string
	conns   chan net.Conn // unbuffered: the accept loop hands over or gives up on closed
	closed  chan struct{}
	once    sync.Once
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
		if v.p.views[v.channel] == v {
			delete(v.p.views, v.channel)
		}
		v.p.mu.Unlock()
	})
	return nil
}

// Addr implements net.Listener.
func (v *listenerView) Addr() net.Addr { return v.p.ln.Addr() }

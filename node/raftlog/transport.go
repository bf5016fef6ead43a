package raftlog

// Transport: raft messages between consenters over the injected Dialer and
// Listener (frame format in frame.go). Each node dials every peer and sends
// on that connection only; it receives on the connections peers dial to it.
// Sends never block the Ready loop: each peer has a bounded queue drained by
// its own goroutine, which dials with backoff; a full queue or a lost
// connection drops messages (raft retransmits), counts the reason and tells
// raft the peer is unreachable. A dropped or failed snapshot message is
// reported as SnapshotFailure, a delivered one as SnapshotFinish.
//
// A silent path (a firewall dropping packets, a relay gone) closes no TCP
// connection: writes sit in the socket while TCP backs its retransmissions
// off to many seconds, so after the path heals the peer would hear nothing
// new until the next retransmission, then a burst of stale messages
// (issue #11: a follower back 7 s after its tunnel). So a sender that has
// written to a peer and heard nothing from it for an election timeout
// (stallAfter) drops the connection and dials afresh; each dial attempt
// waits at most half an election timeout for TCP's connect, with a short
// backoff, so that a healed path is found within about one; and a
// connection the peer opens to this node (proof that the path is back)
// cuts a pending backoff or dial short. Raft traffic runs both ways
// between a leader and each follower (heartbeats and their answers), so
// silence means the path is gone.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sync/errgroup"
)

// reporter is what the transport tells raft; *Node implements it.
type reporter interface {
	reportUnreachable(id uint64)
	reportSnapshot(id uint64, status raft.SnapshotStatus)
}

// Drop reasons, the keys of TransportStats.Dropped.
const (
	DropQueueFull   = "queue_full"    // peer's send queue full
	DropUnreachable = "unreachable"   // no connection to the peer
	DropUnknownPeer = "unknown_peer"  // message to an ID with no address
	DropBadSender   = "bad_sender"    // received message whose From/To contradict the handshake
	DropUnknownType = "unknown_frame" // skipped frame of an unknown type
	DropStepFailed  = "step_failed"   // raft did not take a received message
)

// TransportStats are cumulative counters.
type TransportStats struct {
	Sent, Received uint64
	Dropped        map[string]uint64
	// Silent: connections dropped because the peer said nothing for an
	// election timeout after this node wrote to it (a silent path).
	Silent uint64
	// Panics: connections closed because serving them panicked (a bug;
	// the log has the stack).
	Panics uint64
}

type transport struct {
	id        uint64
	cluster   string
	dialer    Dialer
	ln        net.Listener
	clientTLS *tls.Config
	serverTLS *tls.Config
	queueLen  int
	maxFrame  int
	dialTO    time.Duration
	writeTO   time.Duration
	// stallAfter: a connection on which this node wrote and then heard
	// nothing from the peer for this long is dropped and dialed again; it
	// also bounds the TCP connect of one dial attempt. 0: never.
	stallAfter time.Duration
	log        *slog.Logger
	report     reporter
	// acceptUnknown, if set and true, lets the handshake accept a node of
	// the cluster that is not (yet) a known peer (a joining node), and an
	// addr frame from it makes it a peer, so that this node can answer.
	acceptUnknown func() bool
	// selfAddr, if set, returns this node's own address, sent in an addr
	// frame after each handshake ("" = none known).
	selfAddr func() string
	// idle, if set and true, says this node takes no part in consensus
	// (retired or removed): an unreachable peer is redialed only every
	// idleBackoff.
	idle func() bool
	step func(ctx context.Context, m raftpb.Message) error

	mu      sync.Mutex
	peers   map[uint64]*peer
	conns   map[net.Conn]struct{}
	inbound map[uint64]net.Conn      // the one live inbound connection per peer
	heard   map[uint64]*atomic.Int64 // per peer ID: when a message last came (unix ns); entries never removed
	g       *errgroup.Group
	ctx     context.Context
	stopped bool

	sent, received atomic.Uint64
	panics         atomic.Uint64
	silent         atomic.Uint64
	dropMu         sync.Mutex
	dropped        map[string]uint64
}

type peer struct {
	id     uint64
	addr   string
	q      chan raftpb.Message
	cancel context.CancelFunc
	// kick: the peer just connected to this node, so the path is back:
	// cut a backoff or a pending dial short.
	kick chan struct{}
}

func (t *transport) drop(reason string, n int) {
	t.dropMu.Lock()
	if t.dropped == nil {
		t.dropped = map[string]uint64{}
	}
	t.dropped[reason] += uint64(n)
	t.dropMu.Unlock()
}

func (t *transport) stats() TransportStats {
	s := TransportStats{Sent: t.sent.Load(), Received: t.received.Load(), Dropped: map[string]uint64{}, Panics: t.panics.Load(), Silent: t.silent.Load()}
	t.dropMu.Lock()
	for k, v := range t.dropped {
		s.Dropped[k] = v
	}
	t.dropMu.Unlock()
	return s
}

// start serves the listener and the peers' senders in g until ctx ends.
func (t *transport) start(ctx context.Context, g *errgroup.Group, peers []Peer) {
	t.mu.Lock()
	t.g, t.ctx = g, ctx
	t.peers = map[uint64]*peer{}
	t.conns = map[net.Conn]struct{}{}
	t.inbound = map[uint64]net.Conn{}
	t.heard = map[uint64]*atomic.Int64{}
	t.mu.Unlock()
	for _, p := range peers {
		t.addPeer(p)
	}
	g.Go(func() error { return t.acceptLoop(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		t.mu.Lock()
		t.stopped = true
		for c := range t.conns {
			c.Close()
		}
		t.mu.Unlock()
		t.ln.Close()
		return nil
	})
}

// addPeer starts sending to p (no-op for this node or a known ID with the
// same address; a new address replaces the old sender).
func (t *transport) addPeer(p Peer) {
	if p.ID == t.id {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || t.g == nil {
		return
	}
	if old := t.peers[p.ID]; old != nil {
		if old.addr == p.Addr {
			return
		}
		old.cancel()
	}
	ctx, cancel := context.WithCancel(t.ctx)
	pr := &peer{id: p.ID, addr: p.Addr, q: make(chan raftpb.Message, t.queueLen), cancel: cancel, kick: make(chan struct{}, 1)}
	t.peers[p.ID] = pr
	t.g.Go(func() error {
		for !t.runPeerSurviving(ctx, pr) {
			select { // after a panic (logged): again, after a pause
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
		return nil
	})
}

func (t *transport) removePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.peers[id]; p != nil {
		p.cancel()
		delete(t.peers, id)
	}
}

// learnAddr handles an addr frame from node id: while this node joins, a
// sender it does not know becomes a peer at that address.
func (t *transport) learnAddr(id uint64, addr []byte) {
	if len(addr) == 0 || len(addr) > maxAddrLen || addr[0] == 0 || t.acceptUnknown == nil || !t.acceptUnknown() {
		return
	}
	t.mu.Lock()
	_, known := t.peers[id]
	t.mu.Unlock()
	if !known {
		t.log.Info("raft peer learnt from its connection while joining", "peer", id, "addr", string(addr))
		t.addPeer(Peer{ID: id, Addr: string(addr)})
	}
}

// send queues msgs without blocking.
func (t *transport) send(msgs []raftpb.Message) {
	if len(msgs) == 0 {
		return
	}
	var full []uint64
	t.mu.Lock()
	for _, m := range msgs {
		p := t.peers[m.To]
		if p == nil {
			t.drop(DropUnknownPeer, 1)
			t.failed(m)
			continue
		}
		select {
		case p.q <- m:
		default:
			t.drop(DropQueueFull, 1)
			t.failed(m)
			if !slices.Contains(full, m.To) {
				full = append(full, m.To)
			}
		}
	}
	t.mu.Unlock()
	for _, id := range full {
		// Unreachable makes the leader probe instead of streaming.
		t.report.reportUnreachable(id)
	}
}

// failed reports a snapshot message that will not be delivered.
func (t *transport) failed(m raftpb.Message) {
	if m.Type == raftpb.MsgSnap {
		t.report.reportSnapshot(m.To, raft.SnapshotFailure)
	}
}

// runPeerSurviving runs runPeer, which returns when ctx ends; after a
// panic (logged and counted) it returns false so that the caller starts
// sending to p again.
func (t *transport) runPeerSurviving(ctx context.Context, p *peer) (ok bool) {
	defer t.survive(fmt.Sprintf("to peer %d", p.id), func() { t.report.reportUnreachable(p.id) })
	t.runPeer(ctx, p)
	return true
}

// Dial backoff: from backoffMin, doubling, up to maxBackoff.
const backoffMin = 50 * time.Millisecond

// maxBackoff is a quarter of an election timeout (at most 2s): with the
// connect bounded by half an election timeout, a dial goes out at least
// every 0.75 election timeouts while a peer is unreachable.
func (t *transport) maxBackoff() time.Duration {
	if t.stallAfter <= 0 {
		return 2 * time.Second
	}
	return min(max(t.stallAfter/4, backoffMin), 2*time.Second)
}

// idleBackoff is the redial interval of an idle node (transport.idle).
const idleBackoff = 10 * time.Second

// slowPathRate (bytes/s): a peer on a slow path answers a big append
// only once it has all of it, so the silence allowed grows by the time
// the bytes written take at this rate (1 MiB: 8 s more), so that a slow
// link is not taken for a silent one and a big message still gets through.
const slowPathRate = 128 << 10

// silence judges a connection at time now (unix ns): this node first wrote
// at waiting (0: nothing unanswered) and written bytes since; the peer
// last said something at heard. answered: the peer spoke since waiting;
// silent: it did not for stallAfter plus the time written takes at
// slowPathRate. Pure.
func silence(now, waiting, heard int64, written int, stallAfter time.Duration) (answered, silent bool) {
	switch {
	case waiting == 0:
		return false, false
	case heard >= waiting:
		return true, false
	}
	allowed := stallAfter + time.Duration(written)*time.Second/slowPathRate
	return false, time.Duration(now-waiting) > allowed
}

// errStalled: the peer said nothing for stallAfter after this node wrote.
var errStalled = errors.New("raft peer silent")

func (t *transport) runPeer(ctx context.Context, p *peer) {
	backoff := backoffMin
	lastReject := ""   // the last handshake rejection logged as a warning
	wasSilent := false // the last connection ended because the peer fell silent
	for ctx.Err() == nil {
		conn, err := t.connect(ctx, p)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errKicked) {
				backoff = backoffMin
				continue // the peer reached this node: dial again at once
			}
			t.log.Debug("raft peer dial failed", "peer", p.id, "addr", p.addr, "err", err)
			if errors.Is(err, ErrHandshake) && err.Error() != lastReject {
				// Once per reason: a removed node is rejected on every dial.
				t.log.Warn("raft peer rejected the handshake", "peer", p.id, "addr", p.addr, "err", err)
				lastReject = err.Error()
			}
			t.discard(p)
			t.report.reportUnreachable(p.id)
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
				backoff = backoffMin
				continue
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, t.maxBackoff())
			if t.idle != nil && t.idle() {
				backoff = idleBackoff
			}
			continue
		}
		backoff, lastReject = backoffMin, ""
		select { // a kick from before this connection is stale
		case <-p.kick:
		default:
		}
		t.log.Debug("raft peer connected", "peer", p.id, "addr", p.addr)
		start := time.Now().UnixNano()
		err = t.pump(ctx, p, conn)
		conn.Close()
		t.untrack(conn)
		if ctx.Err() != nil {
			return
		}
		stalled := errors.Is(err, errStalled)
		if stalled {
			t.silent.Add(1)
			// Once in a row: a peer busy for long (e.g. applying a
			// snapshot), silent on every new connection, is not news
			// every second.
			lvl := slog.LevelInfo
			if wasSilent && t.heardClock(p.id).Load() < start {
				lvl = slog.LevelDebug
			}
			t.log.Log(ctx, lvl, "raft peer silent: dropped the connection to it and its queued messages, dialing again",
				"peer", p.id, "addr", p.addr, "silent_for", t.stallAfter)
			t.discard(p)
		}
		wasSilent = stalled
		t.log.Debug("raft peer connection lost", "peer", p.id, "err", err)
		t.report.reportUnreachable(p.id)
	}
}

// errKicked: a dial given up because the peer just connected to this node.
var errKicked = errors.New("raft peer connected to this node: dialing again")

// kickPeer tells id's sender that id just reached this node.
func (t *transport) kickPeer(id uint64) {
	t.mu.Lock()
	p := t.peers[id]
	t.mu.Unlock()
	if p != nil {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// heardClock returns when a message from peer id last arrived (unix ns).
func (t *transport) heardClock(id uint64) *atomic.Int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.heard[id]
	if h == nil {
		if t.heard == nil {
			t.heard = map[uint64]*atomic.Int64{}
		}
		h = new(atomic.Int64)
		t.heard[id] = h
	}
	return h
}

// discard drops whatever is queued for an unreachable peer.
func (t *transport) discard(p *peer) {
	for {
		select {
		case m := <-p.q:
			t.drop(DropUnreachable, 1)
			t.failed(m)
		default:
			return
		}
	}
}

func (t *transport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *transport) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

func (t *transport) connect(ctx context.Context, p *peer) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, t.dialTO)
	defer cancel()
	c, err := t.dial(ctx, p)
	if err != nil {
		return nil, err
	}
	if !t.track(c) {
		c.Close()
		return nil, ErrClosed
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
			t.untrack(c)
		}
	}()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	if t.clientTLS != nil {
		tc := tls.Client(c, t.clientTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("TLS handshake with raft peer %d at %s: %w", p.id, p.addr, err)
		}
		t.untrack(c)
		c = tc
		t.track(c)
	}
	h := hello{From: t.id, To: p.id, Cluster: t.cluster}
	if _, err := c.Write(appendFrame(nil, frameHello, h.marshal())); err != nil {
		return nil, err
	}
	fr := frameReader{r: c, max: 4096}
	typ, b, err := fr.next()
	if err != nil {
		return nil, err
	}
	switch typ {
	case frameReject:
		return nil, fmt.Errorf("%w by %s: %s", ErrHandshake, p.addr, b)
	case frameHello:
		got, err := parseHello(b)
		if err != nil {
			return nil, err
		}
		if got.From != p.id || got.To != t.id || got.Cluster != t.cluster {
			return nil, fmt.Errorf("%w: %s answered as node %d of cluster %q (to %d), expected node %d of %q",
				ErrHandshake, p.addr, got.From, got.Cluster, got.To, p.id, t.cluster)
		}
	default:
		return nil, fmt.Errorf("%w: unexpected frame type %d in handshake", ErrProtocol, typ)
	}
	if t.selfAddr != nil {
		if a := t.selfAddr(); a != "" && len(a) <= maxAddrLen {
			if _, err := c.Write(appendFrame(nil, frameAddr, []byte(a))); err != nil {
				return nil, err
			}
		}
	}
	c.SetDeadline(time.Time{})
	ok = true
	return c, nil
}

// dial opens the connection to p: TCP's connect waits at most half of
// stallAfter (a SYN lost to a partition is retried by a new attempt, not by TCP's
// backed-off timer), and a kick (p connected to this node) gives it up
// with errKicked so that the caller dials again at once.
func (t *transport) dial(ctx context.Context, p *peer) (net.Conn, error) {
	timeout := t.dialTO
	if t.stallAfter > 0 {
		timeout = min(timeout, max(t.stallAfter/2, 100*time.Millisecond))
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var kicked atomic.Bool
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-p.kick:
			kicked.Store(true)
			cancel()
		case <-stop:
		case <-dctx.Done():
		}
	}()
	c, err := t.dialer.DialContext(dctx, "tcp", p.addr)
	if err != nil && kicked.Load() && ctx.Err() == nil {
		return nil, errKicked
	}
	return c, err
}

// pump writes queued messages to c until an error or ctx ends. It returns
// errStalled once it has written and then heard nothing from the peer (on
// the peer's own connection to this node) for stallAfter.
func (t *transport) pump(ctx context.Context, p *peer, c net.Conn) error {
	bw := bufio.NewWriterSize(c, 64<<10)
	var buf []byte
	var snaps []raftpb.Message
	var check <-chan time.Time
	if t.stallAfter > 0 {
		tk := time.NewTicker(t.stallAfter / 4)
		defer tk.Stop()
		check = tk.C
	}
	heard := t.heardClock(p.id)
	var waiting int64 // unix ns of the first write not yet followed by a message from the peer; 0: none
	var written int   // bytes written since waiting
	for {
		var m raftpb.Message
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-check:
			answered, silent := silence(now.UnixNano(), waiting, heard.Load(), written, t.stallAfter)
			if silent {
				return errStalled
			}
			if answered {
				waiting, written = 0, 0
			}
			continue
		case m = <-p.q:
		}
		n := 0
		for {
			sz := m.Size()
			buf = appendFrameHeader(buf[:0], frameMsg, sz)
			buf = append(buf, make([]byte, sz)...)
			if _, err := m.MarshalTo(buf[frameHeaderLen:]); err != nil {
				return err
			}
			if _, err := bw.Write(buf); err != nil {
				t.failSnaps(append(snaps, m))
				return err
			}
			if m.Type == raftpb.MsgSnap {
				snaps = append(snaps, m)
			}
			written += len(buf)
			n++
			if cap(buf) > 1<<20 {
				buf = nil
			}
			if n >= 256 {
				break
			}
			select {
			case m = <-p.q:
				continue
			default:
			}
			break
		}
		c.SetWriteDeadline(time.Now().Add(t.writeTO))
		if err := bw.Flush(); err != nil {
			t.failSnaps(snaps)
			return err
		}
		t.sent.Add(uint64(n))
		if waiting == 0 {
			waiting = time.Now().UnixNano()
		}
		for _, s := range snaps {
			t.report.reportSnapshot(s.To, raft.SnapshotFinish)
		}
		snaps = snaps[:0]
	}
}

func (t *transport) failSnaps(snaps []raftpb.Message) {
	for _, s := range snaps {
		if s.Type == raftpb.MsgSnap {
			t.report.reportSnapshot(s.To, raft.SnapshotFailure)
		}
	}
}

func (t *transport) acceptLoop(ctx context.Context) error {
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("raft transport listener %s: %w", t.ln.Addr(), err)
		}
		if !t.track(c) {
			c.Close()
			return nil
		}
		t.mu.Lock()
		g := t.g
		t.mu.Unlock()
		g.Go(func() error {
			// Read the address while the connection is open: a netstack
			// connection has none once its peer is gone.
			remote := addrString(c.RemoteAddr())
			defer t.survive("from "+remote, func() { c.Close(); t.untrack(c) })
			err := t.serve(ctx, c)
			c.Close()
			t.untrack(c)
			if err != nil && ctx.Err() == nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				t.log.Debug("raft inbound connection closed", "remote", remote, "err", err)
			}
			return nil
		})
	}
}

// serve runs the listener side of one connection.
func (t *transport) serve(ctx context.Context, c net.Conn) error {
	c.SetDeadline(time.Now().Add(t.dialTO))
	if t.serverTLS != nil {
		tc := tls.Server(c, t.serverTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		c = tc
	}
	fr := frameReader{r: bufio.NewReaderSize(c, 64<<10), max: 4096}
	typ, b, err := fr.next()
	if err != nil {
		return err
	}
	if typ != frameHello {
		return fmt.Errorf("%w: first frame has type %d, want hello", ErrProtocol, typ)
	}
	h, err := parseHello(b)
	if err != nil {
		return err
	}
	reason := ""
	t.mu.Lock()
	_, known := t.peers[h.From]
	t.mu.Unlock()
	switch {
	case h.Cluster != t.cluster:
		reason = fmt.Sprintf("cluster %q is not this node's cluster %q", h.Cluster, t.cluster)
	case h.To != t.id:
		reason = fmt.Sprintf("this is node %d, not %d", t.id, h.To)
	case !known && (t.acceptUnknown == nil || !t.acceptUnknown()):
		reason = fmt.Sprintf("node %d is not a member of cluster %q here", h.From, t.cluster)
	}
	if reason != "" {
		c.Write(appendFrame(nil, frameReject, []byte(reason)))
		return fmt.Errorf("%w: from %s: %s", ErrHandshake, addrString(c.RemoteAddr()), reason)
	}
	reply := hello{From: t.id, To: h.From, Cluster: t.cluster}
	if _, err := c.Write(appendFrame(nil, frameHello, reply.marshal())); err != nil {
		return err
	}
	// A peer sends on one connection at a time: a new one replaces the old
	// (e.g. after the peer restarted), so connections per member stay bounded.
	t.mu.Lock()
	if old := t.inbound[h.From]; old != nil {
		old.Close()
	}
	t.inbound[h.From] = c
	t.mu.Unlock()
	t.kickPeer(h.From)
	heard := t.heardClock(h.From)
	defer func() {
		t.mu.Lock()
		if t.inbound[h.From] == c {
			delete(t.inbound, h.From)
		}
		t.mu.Unlock()
	}()
	c.SetDeadline(time.Time{})
	fr.max = t.maxFrame
	for {
		typ, b, err := fr.next()
		if err != nil {
			return err
		}
		if typ == frameAddr {
			t.learnAddr(h.From, b)
			continue
		}
		if typ != frameMsg {
			t.drop(DropUnknownType, 1)
			continue
		}
		var m raftpb.Message
		if err := m.Unmarshal(b); err != nil {
			return fmt.Errorf("%w: bad raft message from node %d: %v", ErrProtocol, h.From, err)
		}
		if m.From != h.From || m.To != t.id {
			t.drop(DropBadSender, 1)
			continue
		}
		t.received.Add(1)
		heard.Store(time.Now().UnixNano())
		if err := t.step(ctx, m); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			t.drop(DropStepFailed, 1)
		}
	}
}

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
//
// Consensus first (issue #15): appends and snapshots (bulk) travel on one
// connection per peer, every other message (heartbeats, votes, append
// answers) on a second one, the priority lane, so that a heartbeat never
// waits behind megabytes of block replication in a queue, a buffer or a
// TCP send window (etcd's rafthttp separates MsgApp the same way). A
// dialer names the lane of each connection in a lane frame (frame.go);
// the priority lane to a peer is dialed only once that peer has shown it
// speaks lanes (a lane frame on its connections to this node): an older
// node takes any new connection from a peer as a replacement of the
// previous one, so until then everything goes on the bulk connection,
// priority messages first.
//
// Fewer bytes through the tunnel (issues #11, #15): appends and snapshots
// travel S2-compressed on connections whose listener agreed to it
// (codec.go); TransportStats counts the bytes before and after.

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

	"github.com/memberd/memberd/internal/diag"
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
	// DropBadCompressed: a compressed frame that is corrupt, in a codec
	// not agreed, or decompresses past the frame limit; the connection is
	// closed.
	DropBadCompressed = "bad_compressed"
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
	// Bytes of raft message frames sent and received: Payload as they
	// would be uncompressed, Wire as written or read (frame headers
	// included in both).
	SentPayload, SentWire         uint64
	ReceivedPayload, ReceivedWire uint64
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
	// the cluster that is not (yet) a known peer (while this node joins or
	// knows no leader), and an addr frame from it makes it a peer, so that
	// this node can answer.
	acceptUnknown func() bool
	// selfAddr, if set, returns this node's own address, sent in an addr
	// frame after each handshake ("" = none known).
	selfAddr func() string
	// idle, if set and true, says this node takes no part in consensus
	// (retired or removed): an unreachable peer is redialed only every
	// idleBackoff.
	idle func() bool
	step func(ctx context.Context, m raftpb.Message) error
	// compress: offer S2 when dialing and accept it when dialed
	// (codec.go).
	compress bool

	mu      sync.Mutex
	peers   map[uint64]*peer
	conns   map[net.Conn]struct{}
	inbound map[inboundKey]net.Conn  // the one live inbound connection per peer and lane
	heard   map[uint64]*atomic.Int64 // per peer ID: when a message last came (unix ns); entries never removed
	// heardApp: per peer ID, when an append answer (MsgAppResp) last came;
	// entries never removed. The bulk lane's silence is judged by it.
	heardApp map[uint64]*atomic.Int64
	// lanes: peers (by ID) that sent a lane frame, so speak lanes; entries
	// never removed. laneKnown is closed and replaced when one is added.
	lanes     map[uint64]bool
	laneKnown chan struct{}
	g         *errgroup.Group
	ctx       context.Context
	stopped   bool

	sent, received atomic.Uint64
	hbMu           sync.Mutex
	hbRTT          map[uint64]*rttHist // heartbeat round trips by peer ID (hbrtt.go)
	panics         atomic.Uint64
	silent         atomic.Uint64
	// byte counters (TransportStats)
	sentPayload, sentWire, recvPayload, recvWire atomic.Uint64
	dropMu                                       sync.Mutex
	dropped                                      map[string]uint64
}

// Lanes: which messages a connection carries.
const (
	laneBulk     byte = 0 // MsgApp, MsgSnap; and all messages to a peer that does not speak lanes
	lanePriority byte = 1 // every other message
)

// inboundKey names an inbound connection: the peer and the lane.
type inboundKey struct {
	from uint64
	lane byte
}

// priority reports whether m travels on the priority lane.
func priority(m raftpb.Message) bool {
	return m.Type != raftpb.MsgApp && m.Type != raftpb.MsgSnap
}

type peer struct {
	id     uint64
	addr   string
	q      chan raftpb.Message // bulk lane
	hq     chan raftpb.Message // priority lane
	cancel context.CancelFunc
	// kick (bulk lane) and hkick (priority lane): the peer just connected
	// to this node, so the path is back: cut a backoff or a pending dial
	// short.
	kick, hkick chan struct{}
	// prioUp: the priority lane is connected and drains hq; while false,
	// the bulk lane does.
	prioUp atomic.Bool
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
	s := TransportStats{Sent: t.sent.Load(), Received: t.received.Load(), Dropped: map[string]uint64{}, Panics: t.panics.Load(), Silent: t.silent.Load(),
		SentPayload: t.sentPayload.Load(), SentWire: t.sentWire.Load(), ReceivedPayload: t.recvPayload.Load(), ReceivedWire: t.recvWire.Load()}
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
	t.inbound = map[inboundKey]net.Conn{}
	t.heard = map[uint64]*atomic.Int64{}
	if t.lanes == nil {
		t.lanes = map[uint64]bool{}
		t.laneKnown = make(chan struct{})
	}
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
	pr := &peer{id: p.ID, addr: p.Addr, q: make(chan raftpb.Message, t.queueLen), hq: make(chan raftpb.Message, t.queueLen),
		cancel: cancel, kick: make(chan struct{}, 1), hkick: make(chan struct{}, 1)}
	t.peers[p.ID] = pr
	for _, lane := range []byte{laneBulk, lanePriority} {
		t.g.Go(func() error {
			for !t.runPeerSurviving(ctx, pr, lane) {
				select { // after a panic (logged): again, after a pause
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
			return nil
		})
	}
}

// speaksLanes reports whether peer id sent a lane frame, and a channel
// closed when the next peer is found to.
func (t *transport) speaksLanes(id uint64) (bool, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lanes[id], t.laneKnown
}

// learnLanes records that peer id speaks lanes.
func (t *transport) learnLanes(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lanes == nil {
		t.lanes = map[uint64]bool{}
		t.laneKnown = make(chan struct{})
	}
	if !t.lanes[id] {
		t.lanes[id] = true
		close(t.laneKnown)
		t.laneKnown = make(chan struct{})
	}
}

func (t *transport) removePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.peers[id]; p != nil {
		p.cancel()
		delete(t.peers, id)
	}
}

// learnAddr handles an addr frame from node id: while acceptUnknown, a
// sender it does not know becomes a peer at that address.
func (t *transport) learnAddr(id uint64, addr []byte) {
	if len(addr) == 0 || len(addr) > maxAddrLen || addr[0] == 0 || t.acceptUnknown == nil || !t.acceptUnknown() {
		return
	}
	t.mu.Lock()
	_, known := t.peers[id]
	t.mu.Unlock()
	if !known {
		t.log.Info("raft peer learnt from its connection (this node joins or knows no leader)", "peer", id, "addr", string(addr))
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
		stampHeartbeat(&m)
		q := p.q
		if priority(m) && !diag.NoPriority {
			q = p.hq
		}
		select {
		case q <- m:
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
func (t *transport) runPeerSurviving(ctx context.Context, p *peer, lane byte) (ok bool) {
	defer t.survive(fmt.Sprintf("to peer %d", p.id), func() { t.report.reportUnreachable(p.id) })
	if lane == lanePriority {
		t.runPriority(ctx, p)
	} else {
		t.runPeer(ctx, p, laneBulk)
	}
	return true
}

// runPriority runs the priority lane to p once p speaks lanes (until then
// the bulk lane carries p's priority messages).
func (t *transport) runPriority(ctx context.Context, p *peer) {
	if diag.NoPriority { // benchmark only: everything on the bulk lane
		<-ctx.Done()
		return
	}
	for {
		ok, known := t.speaksLanes(p.id)
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-known:
		}
	}
	t.runPeer(ctx, p, lanePriority)
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

func (t *transport) runPeer(ctx context.Context, p *peer, lane byte) {
	backoff := backoffMin
	lastReject := ""   // the last handshake rejection logged as a warning
	wasSilent := false // the last connection ended because the peer fell silent
	kick := p.kick
	if lane == lanePriority {
		kick = p.hkick
	}
	for ctx.Err() == nil {
		conn, err := t.connect(ctx, p, lane)
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
			t.discard(p, lane)
			t.report.reportUnreachable(p.id)
			select {
			case <-ctx.Done():
				return
			case <-kick:
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
		case <-kick:
		default:
		}
		t.log.Debug("raft peer connected", "peer", p.id, "addr", p.addr, "lane", lane)
		start := time.Now().UnixNano()
		if lane == lanePriority {
			p.prioUp.Store(true)
		}
		var codec atomic.Uint32 // the codec the listener agreed to, once it answers
		answered := make(chan struct{})
		if t.compress {
			go func() {
				defer close(answered)
				readCodecAnswer(conn, &codec)
			}()
		} else {
			close(answered)
		}
		err = t.pump(ctx, p, conn, lane, &codec)
		if lane == lanePriority {
			p.prioUp.Store(false)
		}
		conn.Close()
		<-answered
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
				"peer", p.id, "addr", p.addr, "lane", lane, "silent_for", t.stallAfter.String())
			t.discard(p, lane)
		}
		wasSilent = stalled
		t.log.Debug("raft peer connection lost", "peer", p.id, "err", err)
		t.report.reportUnreachable(p.id)
	}
}

// errKicked: a dial given up because the peer just connected to this node.
var errKicked = errors.New("raft peer connected to this node: dialing again")

// kickPeer tells id's senders that id just reached this node.
func (t *transport) kickPeer(id uint64) {
	t.mu.Lock()
	p := t.peers[id]
	t.mu.Unlock()
	if p != nil {
		for _, k := range []chan struct{}{p.kick, p.hkick} {
			select {
			case k <- struct{}{}:
			default:
			}
		}
	}
}

// heardClock returns when a message from peer id last arrived (unix ns).
func (t *transport) heardClock(id uint64) *atomic.Int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return clockOf(&t.heard, id)
}

// heardAppClock returns when an append answer from peer id last arrived
// (unix ns).
func (t *transport) heardAppClock(id uint64) *atomic.Int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return clockOf(&t.heardApp, id)
}

// clockOf returns (*m)[id], created if missing. Call with t.mu held.
func clockOf(m *map[uint64]*atomic.Int64, id uint64) *atomic.Int64 {
	h := (*m)[id]
	if h == nil {
		if *m == nil {
			*m = map[uint64]*atomic.Int64{}
		}
		h = new(atomic.Int64)
		(*m)[id] = h
	}
	return h
}

// discard drops whatever is queued for an unreachable peer on lane (the
// bulk lane also drops the priority queue while it is the one draining it).
func (t *transport) discard(p *peer, lane byte) {
	q, also := p.q, p.hq
	if lane == lanePriority {
		q, also = p.hq, nil
	} else if p.prioUp.Load() {
		also = nil
	}
	for {
		select {
		case m := <-q:
			t.drop(DropUnreachable, 1)
			t.failed(m)
		case m := <-also:
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

func (t *transport) connect(ctx context.Context, p *peer, lane byte) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, t.dialTO)
	defer cancel()
	c, err := t.dial(ctx, p, lane)
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
	// The lane first: the listener files the connection by it.
	if _, err := c.Write(appendFrame(nil, frameLane, []byte{lane})); err != nil {
		return nil, err
	}
	if t.selfAddr != nil {
		if a := t.selfAddr(); a != "" && len(a) <= maxAddrLen {
			if _, err := c.Write(appendFrame(nil, frameAddr, []byte(a))); err != nil {
				return nil, err
			}
		}
	}
	if t.compress { // the answer is read by readCodecAnswer
		if _, err := c.Write(appendFrame(nil, frameCodecs, []byte{codecS2})); err != nil {
			return nil, err
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
func (t *transport) dial(ctx context.Context, p *peer, lane byte) (net.Conn, error) {
	kick := p.kick
	if lane == lanePriority {
		kick = p.hkick
	}
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
		case <-kick:
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

// readCodecAnswer reads what the listener sends on a connection this node
// dialed: at most a codecs frame naming the codec it agreed to, stored in
// codec. It returns when the connection ends (an older listener sends
// nothing at all).
func readCodecAnswer(c net.Conn, codec *atomic.Uint32) {
	fr := frameReader{r: c, max: 4096}
	for {
		typ, b, err := fr.next()
		if err != nil {
			return
		}
		if typ == frameCodecs && len(b) == 1 && b[0] == codecS2 {
			codec.Store(uint32(codecS2))
		}
	}
}

// pump writes messages queued for lane to c until an error or ctx ends
// (the bulk lane also those of the priority lane, first, while that is not
// connected), compressed once the listener agreed to a codec. It returns
// errStalled once it has written and then heard nothing from the peer (on
// the peer's own connections to this node) for stallAfter.
func (t *transport) pump(ctx context.Context, p *peer, c net.Conn, lane byte, codec *atomic.Uint32) error {
	// queues returns the queues to drain now: first (priority) before second.
	queues := func() (first, second chan raftpb.Message) {
		if lane == lanePriority {
			return p.hq, nil
		}
		if p.prioUp.Load() {
			return nil, p.q
		}
		return p.hq, p.q
	}
	// ready returns a queued message without waiting.
	ready := func() (raftpb.Message, bool) {
		first, second := queues()
		select {
		case m := <-first:
			return m, true
		default:
		}
		select {
		case m := <-second:
			return m, true
		default:
		}
		return raftpb.Message{}, false
	}
	bw := bufio.NewWriterSize(c, 64<<10)
	var buf, zbuf []byte
	var gate compressGate
	var snaps []raftpb.Message
	var check <-chan time.Time
	if t.stallAfter > 0 {
		tk := time.NewTicker(t.stallAfter / 4)
		defer tk.Stop()
		check = tk.C
	}
	// The peer answers appends with MsgAppResp, on its priority lane once
	// it has one; its heartbeat answers there say nothing of this
	// connection. So while the priority lane is up, the bulk lane is
	// silent when no append answer came: a bulk connection stuck (e.g. in
	// TCP's backed-off retransmissions) is dropped and dialed again, as
	// before the lanes, although heartbeats still flow.
	heard, heardApp := t.heardClock(p.id), t.heardAppClock(p.id)
	var waiting int64 // unix ns of the first write not yet followed by a message from the peer; 0: none
	var written int   // bytes written since waiting
	// A lane switch (the priority lane connecting or failing) changes what
	// this lane drains: look again at least this often.
	recheck := time.NewTicker(100 * time.Millisecond)
	defer recheck.Stop()
	for {
		var m raftpb.Message
		var ok bool
		first, second := queues()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-recheck.C:
			continue
		case now := <-check:
			h := heard
			if lane == laneBulk && p.prioUp.Load() {
				h = heardApp
			}
			answered, silent := silence(now.UnixNano(), waiting, h.Load(), written, t.stallAfter)
			if silent {
				return errStalled
			}
			if answered {
				waiting, written = 0, 0
			}
			continue
		case m = <-first:
		case m = <-second:
		}
		n := 0
		appends := false // the batch holds an append or a snapshot
		for {
			appends = appends || !priority(m)
			sz := m.Size()
			buf = appendFrameHeader(buf[:0], frameMsg, sz)
			buf = append(buf, make([]byte, sz)...)
			if _, err := m.MarshalTo(buf[frameHeaderLen:]); err != nil {
				return err
			}
			wire := buf
			if z, ok := gate.append(zbuf[:0], byte(codec.Load()), buf[frameHeaderLen:]); ok {
				wire, zbuf = z, z
			}
			if _, err := bw.Write(wire); err != nil {
				t.failSnaps(append(snaps, m))
				return err
			}
			if m.Type == raftpb.MsgSnap {
				snaps = append(snaps, m)
			}
			written += len(wire)
			t.sentPayload.Add(uint64(len(buf)))
			t.sentWire.Add(uint64(len(wire)))
			n++
			if cap(buf) > 1<<20 {
				buf = nil
			}
			if cap(zbuf) > 1<<20 {
				zbuf = nil
			}
			if n >= 256 {
				break
			}
			if m, ok = ready(); ok {
				continue
			}
			break
		}
		c.SetWriteDeadline(time.Now().Add(t.writeTO))
		if err := bw.Flush(); err != nil {
			t.failSnaps(snaps)
			return err
		}
		t.sent.Add(uint64(n))
		// A bulk lane judged by append answers waits only for answers to
		// appends.
		if waiting == 0 && (appends || lane == lanePriority || !p.prioUp.Load()) {
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
	c.SetDeadline(time.Time{})
	fr.max = t.maxFrame
	// The first frame says the lane (a lane frame), else this is a bulk
	// connection from a node that does not speak lanes.
	typ, b, err = fr.next()
	if err != nil {
		return err
	}
	key := inboundKey{from: h.From, lane: laneBulk}
	pending := true // b is the first frame, still to handle
	if typ == frameLane {
		pending = false
		if len(b) == 1 && b[0] == lanePriority {
			key.lane = lanePriority
		}
		t.learnLanes(h.From)
	}
	// A peer sends on one connection per lane at a time: a new one replaces
	// the old (e.g. after the peer restarted), so connections per member
	// stay bounded.
	t.mu.Lock()
	if old := t.inbound[key]; old != nil {
		old.Close()
	}
	t.inbound[key] = c
	t.mu.Unlock()
	t.kickPeer(h.From)
	heard, heardApp := t.heardClock(h.From), t.heardAppClock(h.From)
	dec := decompressor{max: t.maxFrame}
	answered := false // the codecs frame was answered
	defer func() {
		t.mu.Lock()
		if t.inbound[key] == c {
			delete(t.inbound, key)
		}
		t.mu.Unlock()
	}()
	for {
		if !pending {
			typ, b, err = fr.next()
			if err != nil {
				return err
			}
		}
		pending = false
		if typ == frameLane {
			continue
		}
		if typ == frameAddr {
			t.learnAddr(h.From, b)
			continue
		}
		if typ == frameCodecs {
			if !answered {
				answered = true
				dec.codec = chooseCodec(b, t.compress)
				var ans []byte
				if dec.codec != codecNone {
					ans = []byte{dec.codec}
				}
				c.SetWriteDeadline(time.Now().Add(t.writeTO))
				if _, err := c.Write(appendFrame(nil, frameCodecs, ans)); err != nil {
					return err
				}
				c.SetWriteDeadline(time.Time{})
			}
			continue
		}
		body := b
		switch typ {
		case frameMsg:
		case frameZMsg:
			if body, err = dec.decode(b); err != nil {
				t.drop(DropBadCompressed, 1)
				return fmt.Errorf("from node %d: %w", h.From, err)
			}
		default:
			t.drop(DropUnknownType, 1)
			continue
		}
		t.recvWire.Add(uint64(frameHeaderLen + len(b)))
		t.recvPayload.Add(uint64(frameHeaderLen + len(body)))
		var m raftpb.Message
		if err := m.Unmarshal(body); err != nil {
			return fmt.Errorf("%w: bad raft message from node %d: %v", ErrProtocol, h.From, err)
		}
		if m.From != h.From || m.To != t.id {
			t.drop(DropBadSender, 1)
			continue
		}
		t.received.Add(1)
		now := time.Now().UnixNano()
		heard.Store(now)
		if m.Type == raftpb.MsgAppResp {
			heardApp.Store(now)
		}
		t.answeredHeartbeat(&m)
		if err := t.step(ctx, m); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			t.drop(DropStepFailed, 1)
		}
	}
}

package raftlog

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultSnapshotBytes is Config.SnapshotBytes's default. Fabric
// etcdraft's SnapshotIntervalSize defaults to 16 MB; 4 MiB keeps a whole
// appliance (tunnel, relay client, ledger) under 150 MB RSS in `make soak`,
// where 16 MiB reached 174 MB and 8 MiB 148 MB. A snapshot here is cheap
// (block height and hash); a follower further behind than the entries
// kept pulls blocks over Deliver.
const DefaultSnapshotBytes = 4 << 20

// Dialer opens connections to peers. *net.Dialer satisfies it; the appliance
// passes the WireGuard tunnel's dialer. The network is always "tcp".
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Peer is one consenter.
type Peer struct {
	ID   uint64 // raft ID, non-zero, unique in the cluster
	Addr string // address given to Dialer.DialContext (ignored for this node)
	// Name is what the application calls the node (the member id), at most
	// 255 bytes; recorded in the log with the ID. Optional.
	Name string
}

// Entry is one committed application entry, in log order.
type Entry struct {
	Index uint64 // raft index; indexes of internal entries are skipped
	Term  uint64
	Data  []byte // exactly the bytes given to Propose; do not modify
}

// Snapshot is the application state a snapshot stands for: Data is what
// Config.SnapshotData returned when the snapshot was made (e.g. block height
// and last block hash).
type Snapshot struct {
	Index, Term uint64
	Data        []byte
}

// Commit is one batch for Config.Apply. If Snapshot is set, the application
// state must first be brought to the snapshot (for the ledger: fetch the
// missing blocks up to Snapshot.Data's height from peers) because the entries
// before it are no longer in the log; Entries then continue from
// Snapshot.Index+1.
type Commit struct {
	Snapshot *Snapshot
	Entries  []Entry
}

// Config configures a Node. The zero value of each field documented with a
// default means that default. New copies the Config; later changes to the
// caller's value have no effect.
type Config struct {
	ID      uint64 // this node's raft ID (required, non-zero)
	Cluster string // cluster / channel name, checked in the handshake and the log dir (required)
	// Peers lists every consenter, including this node, when the cluster is
	// first created. When Dir already holds a log, membership comes from the
	// log (conf changes record ID, Name and Addr) and Peers only fills in a
	// Name or Addr the log lacks (logs of older versions). Each Addr is
	// dialed through Dialer.
	Peers []Peer
	// Join: start with an empty log and wait for the leader to send the
	// membership (for a node added with AddPeer): the leader's snapshot
	// carries every member's ID, Name and Addr, so Peers may be empty. Until
	// then the node accepts connections from any node of its cluster.
	Join bool
	Dir  string // data directory for the log and snapshots (required)

	Dialer   Dialer       // outbound connections (required)
	Listener net.Listener // inbound connections; Close closes it (required)
	// ClientTLS / ServerTLS: optional TLS on top of the connections, for use
	// without the tunnel. Both nil: plain (the tunnel authenticates members).
	ClientTLS, ServerTLS *tls.Config

	TickInterval   time.Duration // default 100ms
	ElectionTicks  int           // default 10
	HeartbeatTicks int           // default 1
	// SnapshotBytes bounds raft's in-memory log by bytes (Fabric etcdraft's
	// SnapshotIntervalSize): make a snapshot and compact the log once the
	// entries applied since the last snapshot hold this many bytes of data.
	// The entries kept below a snapshot (CatchUpEntries) hold at most this
	// many bytes too, so memory holds about 2 × SnapshotBytes of applied
	// entries (memlog.go). Set it above the largest blocks, so that a few
	// stay in memory for lagging followers. Default 4 MiB
	// (DefaultSnapshotBytes).
	SnapshotBytes uint64
	// SnapshotEvery: also make a snapshot every this many applied entries,
	// however small. Default 10000.
	SnapshotEvery uint64
	// CatchUpEntries: at most this many entries (holding at most
	// SnapshotBytes) are kept in memory below a snapshot, so that slightly
	// lagging followers catch up without a snapshot. Default 1000.
	CatchUpEntries uint64
	// MaxSizePerMsg bounds the entries in one append message. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs: append messages in flight per follower. Default 256.
	MaxInflightMsgs int
	// MaxInflightBytes bounds the entry bytes sent to one follower and not
	// yet acknowledged (raft's MaxInflightBytes): a slow or vanished
	// follower then pins at most this much of the leader's memory in its
	// send queue, entries compacted away since included. At least
	// MaxSizePerMsg. Default 2 × SnapshotBytes, at least MaxSizePerMsg.
	MaxInflightBytes uint64
	// MaxEntryBytes bounds one proposal (and the entries this node accepts
	// into its log and frames from peers): use the same value on every
	// consenter, at least the largest block. Default 16 MiB.
	MaxEntryBytes int
	// SendQueue: raft messages queued per peer before new ones are dropped
	// (raft retransmits). Default 1024.
	SendQueue int
	// SegmentBytes: start a new log segment at the next snapshot once the
	// current one is this big. Default 64 MiB.
	SegmentBytes int64
	// DialTimeout bounds dial plus handshake. Default 5s. The TCP connect
	// of one attempt waits at most half an election timeout
	// (ElectionTicks × TickInterval), and a connection to a peer that says
	// nothing for an election timeout after this node wrote is dropped and
	// dialed again (transport.go), so a healed path is found within about
	// an election timeout.
	DialTimeout time.Duration
	// WriteTimeout bounds one flush to a peer. Default 5s.
	WriteTimeout time.Duration

	// Applied is the highest index the application has durably applied
	// before this start (e.g. recorded with its blocks). Entries at or below
	// it are not delivered again. 0: deliver every entry after the snapshot.
	Applied uint64
	// Apply receives committed entries in log order, from the Run goroutine;
	// the node does not go on until it returns. It must be deterministic: a
	// function of the log only. An error stops the node (Run returns it).
	// Required.
	Apply func(ctx context.Context, c Commit) error
	// OnLeaderChange, if set, is called from the Run goroutine whenever the
	// known leader changes (0: none known), before the entries of the same
	// Ready are applied. It must not block. A new leader should cut blocks
	// only once it has applied every entry committed before its term: e.g.
	// wait for Status().Applied >= Status().Commit after the first commit of
	// its term (raft commits an empty entry at the start of each term).
	OnLeaderChange func(leader, term uint64)
	// SnapshotData returns the application state as of the last applied
	// index (every Commit up to index has been applied). Called from the Run
	// goroutine. nil: empty snapshot data.
	SnapshotData func(index uint64) ([]byte, error)

	Logger *slog.Logger // nil: discard
	// Registerer, if set, gets the raft_* metrics (leader, term, commit and
	// applied index, messages sent/received/dropped by reason), labelled
	// with cluster and node; Close unregisters them.
	Registerer prometheus.Registerer
}

func (c *Config) withDefaults() Config {
	d := *c
	d.Peers = append([]Peer(nil), c.Peers...)
	if d.TickInterval == 0 {
		d.TickInterval = 100 * time.Millisecond
	}
	if d.ElectionTicks == 0 {
		d.ElectionTicks = 10
	}
	if d.HeartbeatTicks == 0 {
		d.HeartbeatTicks = 1
	}
	if d.SnapshotBytes == 0 {
		d.SnapshotBytes = DefaultSnapshotBytes
	}
	if d.SnapshotEvery == 0 {
		d.SnapshotEvery = 10000
	}
	if d.CatchUpEntries == 0 {
		d.CatchUpEntries = 1000
	}
	if d.MaxSizePerMsg == 0 {
		d.MaxSizePerMsg = 1 << 20
	}
	if d.MaxInflightBytes == 0 {
		d.MaxInflightBytes = max(2*d.SnapshotBytes, d.MaxSizePerMsg)
	}
	if d.MaxInflightMsgs == 0 {
		d.MaxInflightMsgs = 256
	}
	if d.MaxEntryBytes == 0 {
		d.MaxEntryBytes = 16 << 20
	}
	if d.SendQueue == 0 {
		d.SendQueue = 1024
	}
	if d.SegmentBytes == 0 {
		d.SegmentBytes = 64 << 20
	}
	if d.DialTimeout == 0 {
		d.DialTimeout = 5 * time.Second
	}
	if d.WriteTimeout == 0 {
		d.WriteTimeout = 5 * time.Second
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}

// Validate reports the first problem with the Config, naming the field.
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, a...))
	}
	switch {
	case c.ID == 0:
		return bad("ID must be non-zero")
	case c.Cluster == "" || len(c.Cluster) > 255:
		return bad("Cluster must be 1..255 bytes")
	case c.Dir == "":
		return bad("Dir is required")
	case c.Dialer == nil:
		return bad("Dialer is required")
	case c.Listener == nil:
		return bad("Listener is required")
	case c.Apply == nil:
		return bad("Apply is required")
	case c.TickInterval < 0, c.ElectionTicks < 0, c.HeartbeatTicks < 0, c.MaxInflightMsgs < 0,
		c.MaxEntryBytes < 0, c.SendQueue < 0, c.SegmentBytes < 0, c.DialTimeout < 0, c.WriteTimeout < 0:
		return bad("durations, counts and sizes must not be negative")
	}
	d := c.withDefaults()
	if d.ElectionTicks <= d.HeartbeatTicks {
		return bad("ElectionTicks (%d) must be greater than HeartbeatTicks (%d)", d.ElectionTicks, d.HeartbeatTicks)
	}
	if d.MaxInflightBytes < d.MaxSizePerMsg {
		return bad("MaxInflightBytes (%d) must be at least MaxSizePerMsg (%d)", d.MaxInflightBytes, d.MaxSizePerMsg)
	}
	seen := map[uint64]bool{}
	self := false
	for _, p := range c.Peers {
		if p.ID == 0 || seen[p.ID] {
			return bad("Peers: ID %d is zero or repeated", p.ID)
		}
		seen[p.ID] = true
		if p.ID == c.ID {
			self = true
		} else if p.Addr == "" {
			return bad("Peers: peer %d has no Addr", p.ID)
		}
		if len(p.Name) > maxNameLen || len(p.Addr) > maxAddrLen || (p.Addr != "" && p.Addr[0] == 0) {
			return bad("Peers: peer %d has a Name over %d bytes, an Addr over %d bytes or one starting with a zero byte", p.ID, maxNameLen, maxAddrLen)
		}
	}
	if !self && !c.Join {
		return bad("Peers must include this node (ID %d) unless Join is set", c.ID)
	}
	return nil
}

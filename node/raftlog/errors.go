package raftlog

import "errors"

// Sentinel errors; returned wrapped with details (file, offset, peer).
var (
	// ErrCorrupt: the on-disk log or a snapshot file is damaged in a way that
	// is not a torn tail; the node refuses to start rather than lose entries.
	ErrCorrupt = errors.New("raft log corrupt")
	// ErrLocked: another process has the log directory open.
	ErrLocked = errors.New("raft log directory in use")
	// ErrWrongDir: the directory holds the log of another node or cluster.
	ErrWrongDir = errors.New("raft log directory belongs to another node")
	// ErrTooLarge: an entry or frame exceeds the configured limit.
	ErrTooLarge = errors.New("raft data too large")
	// ErrProtocol: a peer sent something the wire format forbids.
	ErrProtocol = errors.New("raft transport protocol error")
	// ErrHandshake: a peer named the wrong cluster, node or sender ID.
	ErrHandshake = errors.New("raft transport handshake rejected")
	// ErrClosed: the node has been closed.
	ErrClosed = errors.New("raft node closed")
	// ErrInvalidConfig: Config.Validate failed.
	ErrInvalidConfig = errors.New("invalid raft log config")
	// ErrDropped: raft refused the proposal (no leader known, leadership
	// transfer in progress, or this node was removed); retry later.
	ErrDropped = errors.New("raft proposal dropped")
	// ErrStaleMembership: a membership change derived from an older
	// version than the one the log has applied (MembershipVersion) was
	// refused; plan it again from the newer version.
	ErrStaleMembership = errors.New("membership change older than the membership in the log")
)

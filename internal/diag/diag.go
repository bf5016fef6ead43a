// Package diag holds diagnostic switches, read once from the environment
// when the process starts. They exist for measurements (benchmarks), to
// show what a feature is worth by turning it off; never set them in
// production.
package diag

import "os"

// NoPriorityEnv names the environment variable that sets NoPriority.
const NoPriorityEnv = "MEMBERD_DIAG_NO_PRIORITY"

// NoPriority (MEMBERD_DIAG_NO_PRIORITY=1) turns consensus-first off
// (issue #15), for `make bench-consensus` only: raft sends heartbeats,
// votes and append answers on its bulk connection, behind appends and
// snapshots, instead of on the priority lane (node/raftlog), and the relay
// links queue small data frames with the full-size ones instead of ahead
// of them (relay/link.go). A member with it set still talks to members
// without it.
var NoPriority = os.Getenv(NoPriorityEnv) == "1"

// NoRaftCompressionEnv names the environment variable that sets
// NoRaftCompression.
const NoRaftCompressionEnv = "MEMBERD_DIAG_NO_RAFT_COMPRESSION"

// NoRaftCompression (MEMBERD_DIAG_NO_RAFT_COMPRESSION=1) makes raft offer
// and accept no compression (node/raftlog/codec.go), for benchmarks that
// show what it is worth: the node's raft messages travel uncompressed both
// ways. A member with it set still talks to members without it.
var NoRaftCompression = os.Getenv(NoRaftCompressionEnv) == "1"

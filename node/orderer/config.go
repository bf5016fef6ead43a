package orderer

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

// Defaults of Config.
const (
	DefaultSubmitTimeout = 30 * time.Second
	DefaultRecentTxIDs   = 1 << 16
	DefaultSubmitQueue   = 4096
	DefaultStallTimeout  = 5 * time.Second
)

// BlockFetcher pulls committed blocks from other consenters, for a node that
// fell behind a snapshot. FetchBlocks calls fn for blocks from, from+1, ...
// up to to (inclusive), in order, and stops at fn's first error. It may
// return early (e.g. every peer failed); the node retries.
type BlockFetcher interface {
	FetchBlocks(ctx context.Context, from, to uint64, fn func(raw []byte) error) error
}

// BlockFollower is a BlockFetcher that also follows the chain: a node
// whose org is no orderer org of the channel config yet stores other
// consenters' copies of every block it applies (unsignable.go), taken from
// one standing stream rather than one request a block. FollowBlocks calls
// fn for blocks from, from+1, ... as a peer stores them, until fn fails,
// the stream breaks, or ctx ends; a call after one that failed (or whose
// ctx was cancelled with a cause) asks another peer.
type BlockFollower interface {
	FollowBlocks(ctx context.Context, from uint64, fn func(raw []byte) error) error
}

// Forwarder hands an admitted envelope to the current leader (identified by
// its raft ID). Forward returns once the envelope is sent; the returned wait
// blocks until the leader answered: nil for SUCCESS. Forward calls keep their
// order (pipelined, as a Broadcast stream). A follower with a Forwarder
// forwards Broadcast submissions instead of redirecting the client.
type Forwarder interface {
	Forward(ctx context.Context, leader uint64, env []byte) (wait func(context.Context) error, err error)
}

// Config configures a Node. New copies it.
type Config struct {
	// Raft configures the replicated log. Apply, SnapshotData, OnLeaderChange
	// and Applied are set by the Node and must be left zero. Raft.Cluster
	// defaults to the channel id.
	Raft raftlog.Config
	// BlockDir is the block store directory (required).
	BlockDir string
	// Genesis is the channel's config block (block 0), written to an empty
	// store; required when the store is empty. Its channel id, BatchSize and
	// BatchTimeout configure the node.
	Genesis *common.Block
	// Batch overrides the genesis block's BatchSize/BatchTimeout when
	// non-zero (tests and benchmarks).
	Batch block.CutterConfig
	// Signer signs the blocks this node writes (an HSM key). Required.
	Signer crypto.Signer
	// Identity is the marshalled msp.SerializedIdentity holding Signer's
	// certificate; it goes into block signatures. Required.
	Identity []byte
	// Policy returns the current governance policy (e.g. policy.Watcher's
	// current). Required.
	Policy func() *policy.Policy
	// PolicyHistory, if set, finds a policy version this appliance applied
	// before, by hash (policy.FindHistory on the state folder): a config
	// block derived from a version this node no longer holds in memory
	// (it restarted, or more than 16 versions passed) is checked with it.
	// nil: only the versions seen since start.
	PolicyHistory func(policy.Hash) *policy.Policy
	// Fetcher pulls missing blocks after a snapshot. nil: a node that needs
	// blocks it cannot get from its own log stops with ErrCatchUp.
	Fetcher BlockFetcher
	// Forwarder, if set, lets followers forward submissions to the leader.
	Forwarder Forwarder
	// Membership, if set, makes the raft leader apply changes of the
	// policy's ledger.consenters to the running cluster (membership.go).
	Membership *Membership
	// ConfigBlocks makes this node, while it leads, order a Fabric CONFIG
	// block for every policy version that changes what the channel config
	// mirrors (configtx.go), with the admin signatures the policy bundle
	// carries for its ConfigUpdate (#cfgsig), when they meet the channel's
	// mod_policies as a stock Fabric peer checks them. Default false: the
	// channel config stays as in the genesis block, as before CONFIG
	// blocks existed; turn it on once admins sign with --config-block.
	// Every node checks the config blocks it is given whatever this says.
	ConfigBlocks bool
	// FixedBatches turns adaptive cutting off: a block is cut only at
	// BatchSize's limits or BatchTimeout, as by a stock Fabric orderer.
	// Default false: the leader also cuts the pending envelopes at once when
	// none of its blocks is waiting to be committed and stored, which under
	// light load saves up to BatchTimeout per envelope and under load
	// changes nothing (blocks fill while one is in flight). For comparisons.
	FixedBatches bool
	// SubmitTimeout bounds how long a submission waits to be committed.
	// Default 30s.
	SubmitTimeout time.Duration
	// RecentTxIDs bounds the set of recent tx ids used to reject duplicates
	// (a client resubmitting after an ambiguous answer). It costs about
	// 110 bytes per id, and New reads that many envelopes back from the
	// store. Default 1<<16 (about 7 MiB; 1<<20 was 119 MiB per channel).
	// Stock Fabric peers reject a duplicate tx id in any case.
	RecentTxIDs int
	// SubmitQueue bounds admitted envelopes waiting for the cutter. Default 4096.
	SubmitQueue int
	// StallTimeout: a leader whose proposed block is not applied within this
	// long re-reads the store tip and proposes again from there. Default 5s.
	StallTimeout time.Duration
	// Now is the clock (default time.Now): used for the cutter and for
	// certificate validity.
	Now func() time.Time
	// Metrics records block store append times; nil records nothing.
	Metrics *Metrics
	// Logger; nil discards.
	Logger *slog.Logger

	// skipSignerCheck lets a test replay a stock Fabric channel whose
	// orderer keys it cannot hold (New and SetIdentity skip CheckSigner).
	// Unexported: memberd always checks.
	skipSignerCheck bool
}

// ErrInvalidConfig: Config.Validate failed.
var ErrInvalidConfig = errors.New("invalid ordering node config")

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	switch {
	case c.BlockDir == "":
		return fmt.Errorf("%w: BlockDir is required", ErrInvalidConfig)
	case c.Signer == nil:
		return fmt.Errorf("%w: Signer is required (the node's HSM key)", ErrInvalidConfig)
	case len(c.Identity) == 0:
		return fmt.Errorf("%w: Identity is required (msp.SerializedIdentity of the signer's certificate)", ErrInvalidConfig)
	case c.Policy == nil:
		return fmt.Errorf("%w: Policy is required", ErrInvalidConfig)
	case c.Raft.Apply != nil || c.Raft.SnapshotData != nil || c.Raft.OnLeaderChange != nil || c.Raft.Applied != 0:
		return fmt.Errorf("%w: Raft.Apply, SnapshotData, OnLeaderChange and Applied are set by the node; leave them zero", ErrInvalidConfig)
	case c.Membership != nil && c.Membership.Addr == nil:
		return fmt.Errorf("%w: Membership.Addr is required (the raft address of a member)", ErrInvalidConfig)
	case c.SubmitTimeout < 0 || c.RecentTxIDs < 0 || c.SubmitQueue < 0 || c.StallTimeout < 0:
		return fmt.Errorf("%w: negative timeout or bound", ErrInvalidConfig)
	}
	if c.Batch != (block.CutterConfig{}) {
		if err := c.Batch.Validate(); err != nil {
			return fmt.Errorf("%w: Batch: %w", ErrInvalidConfig, err)
		}
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.SubmitTimeout == 0 {
		c.SubmitTimeout = DefaultSubmitTimeout
	}
	if c.RecentTxIDs == 0 {
		c.RecentTxIDs = DefaultRecentTxIDs
	}
	if c.SubmitQueue == 0 {
		c.SubmitQueue = DefaultSubmitQueue
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

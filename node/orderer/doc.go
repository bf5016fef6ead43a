// Package orderer is memberd's ordering node for one channel: it joins the
// pieces of node/ (raftlog, block cutter, blockstore, admission) into a Node,
// and serves Fabric's orderer.AtomicBroadcast gRPC service (Broadcast and
// Deliver) on a grpc.ServiceRegistrar that the caller owns.
//
// # Ordering
//
// The raft LEADER runs the block cutter (block.Cutter, time from a timer in the
// driver loop) and proposes each cut block, unsigned, as one raft entry (wire
// format in entry.go). It cuts adaptively (block.Cutter.Due): pending
// envelopes are cut at once when none of its proposed blocks awaits storing,
// else at BatchSize's limits or BatchTimeout as Fabric's orderer
// (Config.FixedBatches keeps only Fabric's rule). EVERY node applies committed entries in log order: a
// block entry is appended when it is the next block of the store (number and
// previous hash), and skipped otherwise (a stale proposal of a deposed
// leader); the decision depends only on the log. As Fabric's etcdraft, each
// node signs the blocks it writes with its own crypto.Signer and records the
// raft index in the consenter metadata (etcdraft.BlockMetadata.RaftIndex), so
// block headers and data are identical on every node while the SIGNATURES
// metadata names the node that wrote the copy.
//
// # The Broadcast guarantee
//
// Broadcast answers SUCCESS for an envelope only once it is inside a block
// that raft committed (durable on a quorum) and that this node has appended
// and fsynced to its block store. A SUCCESS is therefore never lost: it
// survives the loss of any minority of nodes, including the leader. Any other
// answer (SERVICE_UNAVAILABLE after a leader change or a timeout) promises
// nothing: the envelope may or may not be ordered; the client may resubmit.
//
// Followers do not order: a follower with a Forwarder (BroadcastForwarder:
// a pipelined Broadcast stream to the leader) admits the envelope itself and
// forwards it, answering its client with the leader's answer; without one it
// answers SERVICE_UNAVAILABLE naming the leader (a redirect). An envelope
// forwarded to a leader that is then replaced is answered SERVICE_UNAVAILABLE
// ("resubmit") at the change, not after a timeout. An envelope that arrives
// while the node knows no leader (an election) waits for one, up to three
// election timeouts after the leader was lost, rather than being refused.
//
// # Admission
//
// Before an envelope reaches the cutter: well formed, size within the
// channel's AbsoluteMaxBytes, this channel, ENDORSER_TRANSACTION (CONFIG_UPDATE
// is answered FORBIDDEN with how to change the channel through the policy:
// the channel config follows the policy only, see configtx.go), TxId bound to nonce and creator, signature
// valid and low-S, creator a certificate issued by the CA of a member of the
// current policy whose MSP id matches and who has the writer role, and a tx id
// not seen among the recently committed or in-flight ones (bounded set).
//
// # Wiring (cmd)
//
//	n, _ := orderer.New(orderer.Config{Raft: ..., BlockDir: ..., Genesis: gen, Signer: hsmKey,
//		Identity: id.Serialized(), Policy: watcher.Current, Fetcher: &orderer.DeliverFetcher{...},
//		Forwarder: &orderer.BroadcastForwarder{Peers: ...}})
//	reg := &orderer.Registry{Open: ...}; reg.Start(n)            // one Node per channel
//	go reg.Run(ctx)                                              // runs them; reg.Close() stops them
//	srv, _ := orderer.NewServer(orderer.ServerConfig{Lookup: reg.Lookup})
//	gs := grpc.NewServer(append(orderer.ServerOptions(), grpc.Creds(...ServerTLS...))...)
//	srv.Register(gs)                                             // cmd owns the listener
//	admin.Handle(participation.URLBaseV1, participation.New(...{Registry: reg})) // HTTPS, client certs required
//
// # Catch-up
//
// A node restarted from disk replays its raft log (Config.Raft.Applied is the
// raft index of its last block); when the leader sends a snapshot instead,
// the node pulls the missing blocks from its peers through a BlockFetcher
// (DeliverFetcher: Deliver over gRPC), verifying chain and data hashes.
// The catch-up runs beside the raft loop, so the node votes and acks
// appends meanwhile (it counts toward quorum at once); it is bound by the
// bytes the path carries, so DeliverFetcher asks for gzip-compressed
// blocks (compress.go) and asks the raft leader last (its upload already
// carries the replication to every follower). Its log line ("caught up
// from peers") gives blocks, bytes, time to the first block, storing time
// and the rate.
//
// # Consenters
//
// With Config.Membership, the raft leader makes the raft voters follow the
// policy's ledger.consenters, one conf change at a time (PlanConsenters, the
// pure part, in consenters.go; the driver in membership.go). Raft IDs are
// stable across policy versions (ConsenterID): genesis consenters 1..N,
// later ones derived from the member id; the raft log records ID, member id
// and address of each. A node whose ID is removed stops ordering (ErrRemoved).
package orderer

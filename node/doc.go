// Package node is memberd's ledger node: Fabric-compatible ordering on etcd
// raft. Its pieces live in sub-packages, each usable on its own:
//
//   - node/block: pure Fabric block layer: header and data hashes, building
//     and signing blocks (SIGNATURES/LAST_CONFIG metadata as Fabric 2.5),
//     verifying chains and orderer signatures, parsing and admitting
//     envelopes, and the block cutter (BatchSize/BatchTimeout, time as input).
//   - node/blockstore: the append-only, checksummed, fsynced block file with
//     torn-tail recovery, Get by number and Wait for Deliver.
//   - node/channelconfig: channel config and genesis block from member orgs.
//   - node/raftlog: the etcd raft replicated log.
//
// Test vectors from a stock Fabric 2.5.16 orderer are in node/testdata.
package node

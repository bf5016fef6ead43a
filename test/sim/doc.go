// Package sim holds the seeded simulation of issue #11: the consortium's
// ledger (three node/orderer nodes with raft underneath, each reading its
// policy through a policy.Watcher) in one process, over simnet's simulated
// network, inside a testing/synctest bubble so that every timer runs on
// virtual time. Each seed chooses fault rates, snapshot settings and a
// schedule of partitions (connections reset, or silent), retransmission
// stalls, lost frames (the connection resets), crashes with restarts from
// the same data directories, clock jumps, policy versions (out of order,
// folders rolled back) and the removal of one consenter; the invariants
// are checked at every seed (TestLedgerSim):
//
//   - every SUCCESS-answered envelope is in every chain, and no tx id is
//     in a chain twice;
//   - the chains are prefixes of each other (checked every 500ms) and end
//     identical and verified (hashes, signatures) on the remaining nodes;
//   - a node's policy version never goes down and never skips one it was
//     not given;
//   - no append, heartbeat or snapshot is written to the removed node once
//     the others have it out of raft.
//
// Reproducing: the fault schedule of a seed is the same on every run; the
// goroutine interleaving is not (scheduler, crypto randomness), so a
// failing seed fails again in some of its runs, not all:
//
//	make sim SEEDS=20 SEED=1
//	make sim SEED=7 SEEDS=1 RUNS=10
//	go test -count=1 -v -run TestLedgerSim ./test/sim -sim.seed=7 -sim.seeds=1 [-sim.logs]
//
// Flags: -sim.tx (envelopes per client), -sim.faults (virtual time of the
// fault phase), -sim.resubmit=false (clients do not resubmit after an
// ambiguous answer), -sim.hostile (frames also duplicated and reordered
// within a connection, beyond TCP), -sim.policyskew=false (each policy
// version reaches every node at once; by default each node gets it at its
// own time, as when each member's admins copy it into their policy folder).
//
// Not simulated: the tunnel (wireguard-go + gVisor netstack: gVisor parks
// its goroutines in a way synctest does not count as blocked, so virtual
// time never advances), the relays, gRPC (followers forward through the
// leader's Node, and catch-up reads peers' block stores), and the loss of
// unsynced writes on a crash (a crash keeps what the files hold).
package sim

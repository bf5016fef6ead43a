// Package sim holds the seeded simulation of issue #11: the consortium's
// ledger (three node/orderer nodes with raft underneath) in one process,
// over simnet's simulated network, inside a testing/synctest bubble so that
// every timer runs on virtual time. Each seed chooses fault rates, snapshot
// settings and a schedule of partitions, crashes with restarts and clock
// jumps; the invariants are checked at every seed (TestLedgerSim).
//
//	make sim SEEDS=20 SEED=1
//	go test -count=1 -v -run TestLedgerSim ./test/sim -sim.seed=7 -sim.seeds=1
package sim

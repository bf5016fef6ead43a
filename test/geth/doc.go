// Package geth holds the go-ethereum end-to-end scenario (issue #16): two
// members' geth nodes peer with devp2p (eth protocol) only through memberd's
// tunnel (service forwards, or tunnel.member_addresses), on the real
// binaries: `memberd relay` and `memberd run` processes from `memberd demo
// init`, and geth installed from the Go module proxy; a relay is killed,
// QUIC is blocked, the member hosts are firewalled down to the relays, and
// the ledger orders a Broadcast load meanwhile. `make e2e-geth` builds geth
// (cached) and runs it; docs/quorum.md explains the wiring and
// docs/quorum-besu.md is the runbook for GoQuorum and Besu members.
//
// The test signs its transactions itself (wallet_test.go: secp256k1, RLP,
// EIP-155), so the repository does not depend on go-ethereum.
package geth

// Package geth holds the go-ethereum end-to-end scenario (issue #16): two
// members' geth nodes peer with devp2p (eth protocol) only through memberd's
// tunnel service forwards, on the real binaries: `memberd relay` and
// `memberd run` processes from `memberd demo init`, and geth installed from
// the Go module proxy. `make e2e-geth` builds geth (cached) and runs it;
// docs/quorum.md explains the wiring.
//
// The test signs its transactions itself (wallet_test.go: secp256k1, RLP,
// EIP-155), so the repository does not depend on go-ethereum.
package geth

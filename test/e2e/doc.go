// Package e2e is the end-to-end suite of issue #11 (`make e2e`, run by
// .ci/run after `make test`, not part of `go test ./...` in -short mode):
// the real memberd binary, as separate processes, on hosts made of network
// namespaces (internal/netnstest) behind corporate nftables egress rules,
// with ledger load and faults. See e2e_test.go for the scenarios.
package e2e

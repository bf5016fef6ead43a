// Package e2e is the end-to-end suite of issue #11: the real memberd binary,
// as separate processes, on hosts made of network namespaces
// (internal/netnstest), the way a consortium is deployed in DMZs.
//
//	make e2e        # builds bin/memberd, vets and runs this package (-tags e2e)
//
// The files carry the build tag e2e, so `make test` (go test ./...) does not
// run them; .ci/run calls `make e2e` after `make test`. It needs root,
// iproute2, nftables and SoftHSM2 (testenv: skipped on a laptop without
// them, FAILS under CI=true), and squid (else tinyproxy) for the proxy.
//
// Hosts, on a bridge in a namespace of its own, 10.77.0.0/24, not connected
// to the root namespace: relay1 .11 and relay2 .12 (memberd relay on :443),
// proxy .30 (squid with basic auth on :8888; also the "Internet" attacker),
// members a .21, b .22, c .23 (memberd run, files from `memberd demo init
// --relay-addr`), each behind a corporate nftables ruleset: inbound only
// loopback and established flows, outbound only the relays' UDP/TCP 443 (or
// only the proxy). The test reaches a member's loopback admin and ledger
// ports by making its sockets inside that namespace.
//
// Ledger load (Broadcast from an application of member-a) runs through
// every scenario; each one checks that every SUCCESS-acked envelope is in
// every member's chain and that the block headers are identical, prints its
// figures, and a summary table ends the run. Timing assertions are generous
// bounds that fail only when a mechanism does not work at all.
//
// Besides the faults (UDP blocked, proxy only, relay and leader kill -9,
// partition, torn tail, removal), hostile input is refused and counted by
// reason: TLS without, with a self-signed, an expired or (after the
// removal's policy) a revoked certificate, a garbage first frame and a
// per-source flood against a relay (memberd_relay_handshake_failures_total),
// garbage, HTTP, TLS 1.2 and silent connections against a ledger listener
// (memberd_ledger_tls_handshake_failures_total), bad and replayed Broadcast
// envelopes (answered, none ordered, the replay once), an admitted member
// sending malformed frames and flooding over its rate limit (counted;
// read at the rate; the others' throughput measured), broken, under-signed
// and rolled-back policy files (policy_rejected_total). E2E_RUN (make)
// selects scenarios: E2E_RUN='TestE2E/(formed|member_abuse)'. A follower's SoftHSM2 token is taken away and
// put back (/readyz check hsm, memberd_hsm_up); the HSM keys must be
// non-extractable and no private key may appear in any state folder.
package e2e

package appliance

import (
	"fmt"

	"github.com/memberd/memberd/relay"
)

// The "warnings" of /status: what an operator should fix, each naming the
// thing at fault and what to do. 'memberd status' prints them under its
// table; monitoring can read them from 'memberd status --json'.

// renewIdentity is how an appliance's identity certificate is replaced,
// without a restart.
const renewIdentity = "make a CSR with the HSM key ('memberd hsm csr'), have the member CA sign it, and drop the certificate into the identity folder"

// relayWarnings warns when no relay is connected, and names each relay
// that is not up with its last error.
func relayWarnings(relays []relay.RelayStatus) []string {
	var out, down []string
	for _, r := range relays {
		if r.State == "up" {
			continue
		}
		d := fmt.Sprintf("relay %s (%s) is %s", r.ID, r.Addr, r.State)
		if r.LastError != "" {
			d += ": " + r.LastError
		}
		down = append(down, d)
	}
	if len(relays) > 0 && len(down) == len(relays) {
		out = append(out, "no relay connected: the tunnel reaches no member; check that outbound UDP/443 or TCP/443 (or the HTTP proxy, key relay.proxy) reaches the relays")
	}
	return append(out, down...)
}

// ledgerWarnings reads the ledger part of /status (applianceStatus's
// ledger.status()): a ledger that is not active, or without a raft leader,
// or a policy older than the one the consenters follow.
func ledgerWarnings(st any) []string {
	m, ok := st.(map[string]any)
	if !ok { // not configured
		return nil
	}
	var out []string
	if s, _ := m["state"].(string); s != "active" {
		out = append(out, "ledger is not active: "+s)
	} else if l, _ := m["leader"].(string); l == "" {
		out = append(out, "ledger: no raft leader known (an election is under way, or the consenters cannot reach each other through the tunnel)")
	}
	own, ok1 := m["policy_version"].(uint64)
	floor, ok2 := m["consenters_policy_version"].(uint64)
	if ok1 && ok2 && own < floor {
		out = append(out, fmt.Sprintf("ledger: this member's policy is version %d, older than version %d, which the consenters already follow: "+
			"copy the newer signed bundle into the policy folder (while it leads, this node makes no consenter change until then)", own, floor))
	}
	return out
}

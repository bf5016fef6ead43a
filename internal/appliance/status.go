package appliance

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/memberd/memberd/internal/daemon"
)

// applianceStatus is the /status document.
func applianceStatus(a *Appliance) map[string]any {
	p := a.current.Load()
	peers := []map[string]any{}
	maddrs := a.dev.MemberAddrs() // tunnel.member_addresses; empty without
	for _, ps := range a.dev.Peers() {
		peer := map[string]any{"member": ps.Member, "addr": ps.Addr.String(),
			"key": ps.PublicKey.String(), "attestation_expiry": ps.Expiry, "rotating": !ps.PendingKey.IsZero(),
			"last_handshake": lastHandshake(ps.LastHandshake), "certificate_serial": certSerial(ps.Certificate)}
		if ma, ok := maddrs[ps.Member]; ok {
			peer["member_addr"] = ma.String()
		}
		peers = append(peers, peer)
	}
	st := a.dev.Stats()
	id := a.idp.Current()
	relays := a.client.Status()
	led := a.ledger.status()
	warnings := daemon.UDPBufferWarnings(a.procSys)
	if w := daemon.CertificateWarning("identity certificate "+id.File, id.Certificate, time.Now(), renewIdentity); w != "" {
		warnings = append(warnings, w)
	}
	if p.Member(a.cfg.Member) == nil {
		warnings = append(warnings, fmt.Sprintf("member %q is not in the applied policy version %d: the tunnel carries nothing until a policy re-admits it", a.cfg.Member, p.Version()))
	}
	warnings = append(warnings, relayWarnings(relays)...)
	warnings = append(warnings, ledgerWarnings(led)...)
	var hsmDoc map[string]any
	if a.hsm != nil {
		hsmDoc = a.hsm.status()
		if e, ok := hsmDoc["error"].(string); ok {
			warnings = append(warnings, "the identity key in the HSM cannot sign: "+e)
		}
	}
	return map[string]any{
		"hsm":      hsmDoc,
		"role":     "appliance",
		"member":   a.cfg.Member,
		"warnings": append([]string{}, warnings...), // [] rather than null
		"policy":   map[string]any{"version": p.Version(), "hash": p.Hash().String(), "consortium": p.Consortium()},
		"relays":   relays,
		"identity": map[string]any{"file": id.File, "subject": id.Certificate.Subject.String(),
			"serial": id.Certificate.SerialNumber.String(), "not_after": id.Certificate.NotAfter},
		"tunnel": map[string]any{"addr": a.dev.Addr().String(), "mtu": a.dev.MTU(), "peers": peers,
			"attestations_accepted": st.AttestationsAccepted, "attestations_refused": st.AttestationsRefused,
			"acl_denied": st.ACLDenied, "rotations": st.Rotations, "identity_changes": st.IdentityChanges,
			"certificate_serial": certSerial(a.dev.Identity()),
			"packets_in":         st.PacketsIn, "packets_out": st.PacketsOut, "bytes_in": st.BytesIn, "bytes_out": st.BytesOut},
		"relay_drops": a.client.Drops(),
		"ledger":      led,
	}
}

// lastHandshake is a peer's last WireGuard handshake for /status: RFC 3339,
// or "" when none completed yet.
func lastHandshake(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func certSerial(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return c.SerialNumber.String()
}

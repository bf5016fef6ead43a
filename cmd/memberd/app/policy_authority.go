package app

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/tunnel"
)

// Adapters from a policy snapshot to the seams the relay and the tunnel own.
// The wiring of 'memberd run' / 'memberd relay' hands a new adapter to
// relay.Server.UpdateAuthority / tunnel.Device.SetAuthority from a
// policy.Watcher subscriber; both are immutable like the snapshot.

// policyRelayAuthority adapts a *policy.Policy to relay.Authority.
type policyRelayAuthority struct{ p *policy.Policy }

var _ relay.Authority = policyRelayAuthority{}

// PolicyRelayAuthority returns the relay's view of a policy snapshot.
func PolicyRelayAuthority(p *policy.Policy) relay.Authority { return policyRelayAuthority{p: p} }

func (a policyRelayAuthority) MemberForCert(chain []*x509.Certificate, now time.Time) (string, error) {
	m, err := a.p.MemberForCertificateAt([][]*x509.Certificate{chain}, now)
	switch {
	case err == nil:
		return m.ID, nil
	case errors.Is(err, policy.ErrRevoked):
		return "", fmt.Errorf("%w: %w", relay.ErrRevoked, err)
	default:
		return "", fmt.Errorf("%w: %w", relay.ErrNotMember, err)
	}
}

// Allowed: the relay sees only ciphertext, so it forwards between any two
// members that some ACL rule lets talk (either direction, any port).
func (a policyRelayAuthority) Allowed(from, to string) bool { return a.p.AllowedPair(from, to) }

// Relays lists the relays that carry a key pin: the relay client
// authenticates relays by pin, so a relay listed with ca_certs only is not
// dialled by this version.
func (a policyRelayAuthority) Relays() []relay.RelayInfo {
	var out []relay.RelayInfo
	for _, r := range a.p.Relays() {
		if len(r.Pin) == 0 {
			continue
		}
		out = append(out, relay.RelayInfo{ID: r.ID, Addr: r.Address, Pin: "sha256/" + base64.StdEncoding.EncodeToString(r.Pin)})
	}
	return out
}

// policyTunnelAuthority adapts a *policy.Policy to tunnel.Authority.
type policyTunnelAuthority struct{ p *policy.Policy }

var _ tunnel.Authority = policyTunnelAuthority{}

// PolicyTunnelAuthority returns the tunnel's view of a policy snapshot.
func PolicyTunnelAuthority(p *policy.Policy) tunnel.Authority { return policyTunnelAuthority{p: p} }

func (a policyTunnelAuthority) Members() []tunnel.Member {
	ms := a.p.Members()
	out := make([]tunnel.Member, len(ms))
	for i, m := range ms {
		out[i] = tunnel.Member{ID: m.ID, Addr: m.Addr}
	}
	return out
}

func (a policyTunnelAuthority) VerifyMemberCert(member string, chain []*x509.Certificate) error {
	return a.p.VerifyMemberCertificate(member, chain, time.Now())
}

func (a policyTunnelAuthority) Allowed(from, to string, port uint16) bool {
	return a.p.Allowed(from, to, port)
}

// Package authority adapts a policy snapshot to the seams the relay and the
// tunnel own (relay.Authority, tunnel.Authority), so that neither imports
// policy. The appliance and the relay daemon hand a new adapter to
// relay.Server.UpdateAuthority / tunnel.Device.SetAuthority from a
// policy.Watcher subscriber; both are immutable like the snapshot.
package authority

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

// relayView adapts a *policy.Policy to relay.Authority.
type relayView struct{ p *policy.Policy }

var _ relay.Authority = relayView{}

// Relay returns the relay's view of a policy snapshot.
func Relay(p *policy.Policy) relay.Authority { return relayView{p: p} }

// Relays lists the relays of a policy the relay client can dial (with a pin).
func Relays(p *policy.Policy) []relay.RelayInfo { return relayView{p: p}.Relays() }

func (a relayView) MemberForCert(chain []*x509.Certificate, now time.Time) (string, error) {
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
func (a relayView) Allowed(from, to string) bool { return a.p.AllowedPair(from, to) }

// Relays lists the relays that carry a key pin: the relay client
// authenticates relays by pin, so a relay listed with ca_certs only is not
// dialled by this version.
func (a relayView) Relays() []relay.RelayInfo {
	var out []relay.RelayInfo
	for _, r := range a.p.Relays() {
		if len(r.Pin) == 0 {
			continue
		}
		out = append(out, relay.RelayInfo{ID: r.ID, Addr: r.Address, Pin: "sha256/" + base64.StdEncoding.EncodeToString(r.Pin)})
	}
	return out
}

// tunnelView adapts a *policy.Policy to tunnel.Authority.
type tunnelView struct{ p *policy.Policy }

var _ tunnel.Authority = tunnelView{}

// Tunnel returns the tunnel's view of a policy snapshot.
func Tunnel(p *policy.Policy) tunnel.Authority { return tunnelView{p: p} }

func (a tunnelView) Members() []tunnel.Member {
	ms := a.p.Members()
	out := make([]tunnel.Member, len(ms))
	for i, m := range ms {
		out[i] = tunnel.Member{ID: m.ID, Addr: m.Addr}
	}
	return out
}

func (a tunnelView) VerifyMemberCert(member string, chain []*x509.Certificate) error {
	return a.p.VerifyMemberCertificate(member, chain, time.Now())
}

func (a tunnelView) Allowed(from, to string, port uint16) bool {
	return a.p.Allowed(from, to, port)
}

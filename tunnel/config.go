package tunnel

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// WireGuardOverhead is what WireGuard adds to an IP packet: a 16-byte data
// header (type, receiver index, counter) and a 16-byte Poly1305 tag. Padding
// never takes a packet beyond the MTU, so the largest WireGuard packet is
// MTU + WireGuardOverhead.
const WireGuardOverhead = 32

// Defaults, used for zero fields of Config.
const (
	DefaultRotateEvery        = 24 * time.Hour
	DefaultAnnounceEvery      = 30 * time.Second
	DefaultRotationAckTimeout = 10 * time.Second
	DefaultKeepalive          = 25 * time.Second
	DefaultRequestInterval    = time.Second
	// MaxMTU caps the derived MTU. It was WireGuard's usual 1420, then
	// 4064; the relay client carries 16384-byte packets on every path (on
	// QUIC on its stream), and each packet costs the tunnel the same
	// netstack, WireGuard and relay work whatever its size, so bulk
	// transfer (raft block replication) takes about a twelfth of the
	// packets it took at 1420 (issue #15). TCP connections use the smaller
	// MSS of the two ends, so a peer still at 4064 gets 4064-byte packets.
	MaxMTU = 16384 - WireGuardOverhead
	// MinMTU is the least MTU the tunnel runs with (IPv4 needs 576; below
	// that the transport is unusable for TCP).
	MinMTU = 576
)

// ErrConfig: the configuration is invalid; the message names the field.
var ErrConfig = errors.New("invalid tunnel configuration")

// Config configures a Device. The zero value of every optional field is a
// documented default; New never mutates the caller's Config.
type Config struct {
	// Member is this appliance's member id (required).
	Member string
	// Signer is the member identity key (usually in the HSM) that signs
	// WireGuard key attestations (required). It is the initial identity:
	// Device.SetIdentity switches to a rotated one without a restart.
	Signer crypto.Signer
	// Chain is the identity certificate chain, leaf first; the leaf holds
	// Signer's public key (required, 1..4 certificates).
	Chain []*x509.Certificate
	// Transport carries the packets (required). The Device owns it and closes
	// it on Close.
	Transport PacketTransport
	// Authority is the initial policy snapshot (required); later snapshots
	// come through Device.SetAuthority. It must list Member with an address.
	Authority Authority
	// Logger receives logs; nil discards. The device adds no member or
	// component key (the caller names them); WireGuard's own lines carry
	// sub=wireguard.
	Logger *slog.Logger
	// Registerer, if set, gets the tunnel's Prometheus collectors
	// (memberd_tunnel_*, see metrics.go); Close unregisters them. nil = none.
	Registerer prometheus.Registerer

	// MTU of the tunnel interface. 0 = Transport.MaxPacketSize() minus
	// WireGuardOverhead, capped at MaxMTU. Must leave room for the overhead:
	// a WireGuard packet bigger than the transport accepts stalls TCP.
	MTU int
	// RotateEvery is how often the WireGuard key rotates. 0 = 24h.
	RotateEvery time.Duration
	// AttestationTTL is how long an attestation is valid. 0 = 2×RotateEvery.
	// Must exceed RotateEvery so that a key is always re-attested in time.
	AttestationTTL time.Duration
	// AnnounceEvery is how often the current attestation is sent to every
	// member (and missing ones requested). 0 = 30s.
	AnnounceEvery time.Duration
	// RotationAckTimeout bounds how long a rotation waits for peers to
	// acknowledge the new key before switching anyway. 0 = 10s.
	RotationAckTimeout time.Duration
	// RequestInterval bounds how often a member's request for this
	// member's attestation (the request flag of its announcements) is
	// answered: after a burst of 3, at most one answer per interval per
	// member; the others are counted (control_dropped reason
	// request_limited). Members resend unanswered requests with backoff.
	// 0 = 1s.
	RequestInterval time.Duration
	// Keepalive is WireGuard's persistent keepalive toward every peer, so
	// that relays and middleboxes keep state. 0 = 25s; negative disables.
	Keepalive time.Duration

	// Forwards are local TCP listeners forwarding into the tunnel.
	Forwards []Forward
	// Services expose LAN services on overlay ports to other members.
	Services []Service
	// MemberAddrs, if set, gives every other member a local address with
	// the same ports forwarding to it, following the policy (memberaddrs.go).
	MemberAddrs *MemberAddrs

	// Now returns the current time; nil = time.Now. For tests.
	Now func() time.Time
}

// Forward is a local TCP listen address forwarding every connection to Port
// of Member through the tunnel (subject to the policy ACL).
type Forward struct {
	Listen string // host:port on this host, e.g. "127.0.0.1:7051"
	Member string
	Port   uint16
}

// Service exposes Target (a LAN host:port) on overlay Port of this member;
// other members connect to it where the policy ACL allows.
type Service struct {
	Port   uint16
	Target string // host:port on the LAN, e.g. "10.1.2.3:7051"
}

// Validate checks the configuration without side effects.
func (c *Config) Validate() error {
	if err := validMemberID(c.Member); err != nil {
		return fmt.Errorf("%w: member: %v", ErrConfig, err)
	}
	if c.Signer == nil {
		return fmt.Errorf("%w: signer: the member identity key is required", ErrConfig)
	}
	if len(c.Chain) == 0 || len(c.Chain) > maxChainCerts {
		return fmt.Errorf("%w: chain: want 1..%d certificates (leaf first), have %d", ErrConfig, maxChainCerts, len(c.Chain))
	}
	if !publicKeysEqual(c.Signer.Public(), c.Chain[0].PublicKey) {
		return fmt.Errorf("%w: chain: leaf certificate %q does not hold the identity key: check the key URI and certificate file", ErrConfig, c.Chain[0].Subject)
	}
	if c.Transport == nil {
		return fmt.Errorf("%w: transport is required", ErrConfig)
	}
	if c.Authority == nil {
		return fmt.Errorf("%w: authority (policy snapshot) is required", ErrConfig)
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > 65535-WireGuardOverhead) {
		return fmt.Errorf("%w: mtu %d out of range %d..%d", ErrConfig, c.MTU, MinMTU, 65535-WireGuardOverhead)
	}
	for name, d := range map[string]time.Duration{"rotate_every": c.RotateEvery, "attestation_ttl": c.AttestationTTL, "announce_every": c.AnnounceEvery, "rotation_ack_timeout": c.RotationAckTimeout, "request_interval": c.RequestInterval} {
		if d < 0 {
			return fmt.Errorf("%w: %s must not be negative", ErrConfig, name)
		}
	}
	if c.AttestationTTL != 0 && c.AttestationTTL <= c.withDefaults().RotateEvery {
		return fmt.Errorf("%w: attestation_ttl %s must exceed rotate_every %s", ErrConfig, c.AttestationTTL, c.withDefaults().RotateEvery)
	}
	for i, f := range c.Forwards {
		if _, _, err := net.SplitHostPort(f.Listen); err != nil {
			return fmt.Errorf("%w: forwards[%d].listen %q: %v", ErrConfig, i, f.Listen, err)
		}
		if err := validMemberID(f.Member); err != nil {
			return fmt.Errorf("%w: forwards[%d].member: %v", ErrConfig, i, err)
		}
		if f.Port == 0 {
			return fmt.Errorf("%w: forwards[%d].port must be 1..65535", ErrConfig, i)
		}
	}
	if c.MemberAddrs != nil {
		if err := c.MemberAddrs.Validate(); err != nil {
			return err
		}
	}
	seen := map[uint16]bool{}
	for i, s := range c.Services {
		if s.Port == 0 || seen[s.Port] {
			return fmt.Errorf("%w: services[%d].port %d must be 1..65535 and unique", ErrConfig, i, s.Port)
		}
		seen[s.Port] = true
		h, p, err := net.SplitHostPort(s.Target)
		if err == nil && h == "" {
			err = errors.New("host is empty")
		}
		if err == nil {
			_, err = strconv.ParseUint(p, 10, 16)
		}
		if err != nil {
			return fmt.Errorf("%w: services[%d].target %q: %v", ErrConfig, i, s.Target, err)
		}
	}
	return nil
}

// withDefaults returns a copy with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.RotateEvery == 0 {
		c.RotateEvery = DefaultRotateEvery
	}
	if c.AttestationTTL == 0 {
		c.AttestationTTL = 2 * c.RotateEvery
	}
	if c.AnnounceEvery == 0 {
		c.AnnounceEvery = DefaultAnnounceEvery
	}
	if c.RotationAckTimeout == 0 {
		c.RotationAckTimeout = DefaultRotationAckTimeout
	}
	if c.RequestInterval == 0 {
		c.RequestInterval = DefaultRequestInterval
	}
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Chain = append([]*x509.Certificate(nil), c.Chain...)
	c.Forwards = append([]Forward(nil), c.Forwards...)
	c.Services = append([]Service(nil), c.Services...)
	if c.MemberAddrs != nil {
		m := *c.MemberAddrs
		m.Ports = append([]uint16(nil), m.Ports...)
		c.MemberAddrs = &m
	}
	return c
}

// mtuFor derives the tunnel MTU from the transport's packet limit.
func mtuFor(maxPacket int) int {
	return min(maxPacket-WireGuardOverhead, MaxMTU)
}

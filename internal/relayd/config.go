package relayd

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
)

// DefaultListen is where a relay listens when Config.Listen is empty: UDP
// (QUIC) and TCP (TLS) on the same port.
const DefaultListen = ":443"

// withDefaults returns c with the documented defaults filled in.
func (c Config) withDefaults() Config {
	c.Listen = cmp.Or(c.Listen, DefaultListen)
	c.Admin = cmp.Or(c.Admin, admin.DefaultAddr)
	return c
}

// Config is relay.yaml, decoded by the command line (memberd relay). Unknown keys are an error. Relative paths are
// relative to the directory of the config file.
//
//	id: relay-1                      # required: this relay's id in the policy relay list
//	listen: ":443"                   # default ":443": UDP (QUIC) and TCP (TLS) on the same port
//	certificate: relay.crt           # required: PEM certificate (chain) of the relay
//	key: "pkcs11:token=relay;object=tls?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/memberd/pin"
//	                                 # required: PKCS#11 URI (RFC 7512), or a PEM key file
//	                                 # together with insecure_dev_key: true (development only)
//	insecure_dev_key: false          # default false
//	admin: 127.0.0.1:9464            # default: /metrics /healthz /readyz /status
//	admin_pprof: false               # also Go's pprof under /debug/pprof/; only with a loopback admin
//	limits:                          # defaults as in relay.ServerConfig
//	  rate_bytes_per_sec: 12500000   # per member; -1 = unlimited
//	  rate_burst_bytes: 1048576      # per member; at least 16453 (relay.MinRateBurstBytes:
//	                                 # one full-size packet with its header)
//	  queue_len: 512                 # per connection
//	  max_conns_per_member: 4
//	  handshake_timeout: 3s          # accept to HELLO exchanged (TLS included); 100ms..1m
//	  max_handshakes: 256            # connections in their handshake, all sources
//	  max_handshakes_per_source: 16  # ... from one IPv4 address or IPv6 /64; <= max_handshakes
//	  idle_timeout: 30s              # close an admitted connection silent this long; 1s..1h
//	policy_dir: policy               # signed policy bundles (watched, applied live; members'
//	                                 # offers are verified and stored here too); then
//	state_dir: state                 # the applied policy is kept here, and
//	genesis: "<hex sha-256>"         # version 1 is pinned (required on first start)
//	policy:                          # static alternative to policy_dir (tests, bring-up)
//	  members:                       # member id -> its member CA certificate files
//	    bank-a: {ca: [cas/bank-a.pem]}
//	  revoked: [revoked/stolen.pem]  # certificates refused although issued by a member CA
//	  allow_all: false               # every member may reach every other member
//	  allow: [[bank-a, bank-b], [bank-b, bank-a]]   # one direction per pair
//	  relays:                        # every relay, this one included; the others form the mesh
//	    - {id: relay-1, addr: "relay1.example.net:443", pin: "sha256/..."}
type Config struct {
	ID             string       `yaml:"id"`
	Listen         string       `yaml:"listen"`
	Certificate    string       `yaml:"certificate"`
	Key            string       `yaml:"key"`
	InsecureDevKey bool         `yaml:"insecure_dev_key"`
	Admin          string       `yaml:"admin"`
	AdminPprof     bool         `yaml:"admin_pprof"` // Go's pprof on the admin endpoint
	Limits         Limits       `yaml:"limits"`
	Policy         StaticPolicy `yaml:"policy"`
	PolicyDir      string       `yaml:"policy_dir"`
	StateDir       string       `yaml:"state_dir"`
	Genesis        string       `yaml:"genesis"`

	// Dir is the directory of the config file: relative paths are
	// relative to it.
	Dir string `yaml:"-"`

	// For whole-consortium tests (never from the file): a forward hook,
	// and a gate: while it is open (not closed) the relay serves no QUIC,
	// as if UDP to it were blocked.
	ForwardHook func(from, to string, payload []byte) `yaml:"-"`
	QUICGate    <-chan struct{}                       `yaml:"-"`
}

type Limits struct {
	RateBytesPerSec        float64       `yaml:"rate_bytes_per_sec"`
	RateBurstBytes         float64       `yaml:"rate_burst_bytes"`
	QueueLen               int           `yaml:"queue_len"`
	MaxConnsPerMember      int           `yaml:"max_conns_per_member"`
	HandshakeTimeout       time.Duration `yaml:"handshake_timeout"`
	MaxHandshakes          int           `yaml:"max_handshakes"`
	MaxHandshakesPerSource int           `yaml:"max_handshakes_per_source"`
	IdleTimeout            time.Duration `yaml:"idle_timeout"`
}

// Bounds of limits.handshake_timeout: under 100ms a TLS handshake over a
// proxy or with an HSM cannot finish; over a minute a flood of idle
// connections holds its slots for too long.
const (
	minHandshakeTimeout = 100 * time.Millisecond
	maxHandshakeTimeout = time.Minute
)

// Bounds of limits.idle_timeout: members ping every 50ms and give a relay
// up after 4.8s of silence, so 1s cuts no live member; over an hour a
// silent connection is as good as held for ever.
const (
	minIdleTimeout = time.Second
	maxIdleTimeout = time.Hour
)

func (l Limits) validate() error {
	if l.QueueLen < 0 || l.MaxConnsPerMember < 0 || l.RateBurstBytes < 0 {
		return errors.New("key limits: queue_len, max_conns_per_member and rate_burst_bytes must not be negative")
	}
	if b := l.RateBurstBytes; b != 0 && !(b >= relay.MinRateBurstBytes) {
		return fmt.Errorf("key limits.rate_burst_bytes: %v is below %d, one full-size tunnel packet with its frame header: a smaller bucket never admits one and the relay would drop them all; raise it or leave it out (default %d)",
			b, relay.MinRateBurstBytes, 1<<20)
	}
	if t := l.HandshakeTimeout; t != 0 && (t < minHandshakeTimeout || t > maxHandshakeTimeout) {
		return fmt.Errorf("key limits.handshake_timeout: %v must be %v..%v (default %v; e.g. \"3s\")",
			t, minHandshakeTimeout, maxHandshakeTimeout, relay.DefaultHandshakeTimeout)
	}
	if l.MaxHandshakes < 0 {
		return fmt.Errorf("key limits.max_handshakes: %d must be positive (default %d)", l.MaxHandshakes, relay.DefaultMaxHandshakes)
	}
	if l.MaxHandshakesPerSource < 0 {
		return fmt.Errorf("key limits.max_handshakes_per_source: %d must be positive (default %d)", l.MaxHandshakesPerSource, relay.DefaultMaxHandshakesPerSource)
	}
	if t := l.IdleTimeout; t != 0 && (t < minIdleTimeout || t > maxIdleTimeout) {
		return fmt.Errorf("key limits.idle_timeout: %v must be %v..%v (default %v; e.g. \"30s\")",
			t, minIdleTimeout, maxIdleTimeout, relay.DefaultIdleTimeout)
	}
	total, per := cmp.Or(l.MaxHandshakes, relay.DefaultMaxHandshakes), cmp.Or(l.MaxHandshakesPerSource, relay.DefaultMaxHandshakesPerSource)
	if per > total {
		return fmt.Errorf("key limits.max_handshakes_per_source: %d is above limits.max_handshakes %d: lower it or raise max_handshakes", per, total)
	}
	return nil
}

type StaticPolicy struct {
	Members  map[string]StaticMember `yaml:"members"`
	Revoked  []string                `yaml:"revoked"`
	AllowAll bool                    `yaml:"allow_all"`
	Allow    [][]string              `yaml:"allow"`
	Relays   []RelayEntry            `yaml:"relays"`
}

type StaticMember struct {
	CA []string `yaml:"ca"`
}

type RelayEntry struct {
	ID   string `yaml:"id"`
	Addr string `yaml:"addr"`
	Pin  string `yaml:"pin"`
}

// Validate checks the configuration; errors name the key at fault.
func (c *Config) Validate() error {
	if c.ID == "" || len(c.ID) > 32 {
		return fmt.Errorf("key id: %q must be 1..32 characters (this relay's id in the policy relay list)", c.ID)
	}
	for key, addr := range map[string]string{"listen": c.Listen, "admin": c.Admin} {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return fmt.Errorf("key %s: %q is not host:port (for all interfaces use \":443\")", key, addr)
		}
	}
	if err := admin.CheckPprof("admin_pprof", c.AdminPprof, c.Admin); err != nil {
		return err
	}
	if c.Certificate == "" {
		return errors.New("key certificate: required (PEM file with the relay's certificate)")
	}
	switch {
	case c.Key == "":
		return errors.New("key key: required (a PKCS#11 URI, pkcs11:token=...;object=...)")
	case strings.HasPrefix(c.Key, "pkcs11:"):
		if c.InsecureDevKey {
			return errors.New("key insecure_dev_key: must not be set with a PKCS#11 key")
		}
	case !c.InsecureDevKey:
		return fmt.Errorf("key key: %q is not a PKCS#11 URI; a PEM key file is for development only and needs insecure_dev_key: true", c.Key)
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	p := c.Policy
	if c.PolicyDir != "" {
		if len(p.Members) > 0 || len(p.Relays) > 0 {
			return errors.New("key policy: must not be set together with policy_dir (signed policy bundles)")
		}
		if c.StateDir == "" {
			return errors.New("key state_dir: required with policy_dir (where the applied policy is kept)")
		}
		if c.Genesis != "" {
			if _, err := policy.ParseHash(c.Genesis); err != nil {
				return fmt.Errorf("key genesis: %v", err)
			}
		}
		return nil
	}
	if len(p.Members) == 0 {
		return errors.New("key policy.members: at least one member with its CA certificate is required")
	}
	for m, mem := range p.Members {
		if m == "" || len(m) > 32 {
			return fmt.Errorf("key policy.members: member id %q must be 1..32 characters", m)
		}
		if len(mem.CA) == 0 {
			return fmt.Errorf("key policy.members.%s.ca: at least one CA certificate file is required", m)
		}
	}
	for i, pair := range p.Allow {
		if len(pair) != 2 {
			return fmt.Errorf("key policy.allow[%d]: want [from, to], got %d entries", i, len(pair))
		}
		for _, m := range pair {
			if _, ok := p.Members[m]; !ok {
				return fmt.Errorf("key policy.allow[%d]: %q is not in policy.members", i, m)
			}
		}
	}
	self := false
	for i, r := range p.Relays {
		if r.ID == "" || r.Addr == "" || r.Pin == "" {
			return fmt.Errorf("key policy.relays[%d]: id, addr and pin are required", i)
		}
		if _, _, err := net.SplitHostPort(r.Addr); err != nil {
			return fmt.Errorf("key policy.relays[%d].addr: %q is not host:port", i, r.Addr)
		}
		if !strings.HasPrefix(r.Pin, "sha256/") {
			return fmt.Errorf("key policy.relays[%d].pin: %q must be sha256/<base64> (memberd relay prints its own pin at start)", i, r.Pin)
		}
		self = self || r.ID == c.ID
	}
	if len(p.Relays) > 0 && !self {
		return fmt.Errorf("key policy.relays: this relay (id %q) is not listed", c.ID)
	}
	return nil
}

// Path resolves a file name from the config relative to its directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.Dir, p)
}

package appliance

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/push"
	"github.com/memberd/memberd/tunnel"
)

// Config is memberd.yaml, the appliance configuration (docs/appliance.md).
// Unknown keys are an error. Relative paths are relative to the directory of
// the config file. Defaults are written next to each key.
//
//	member: bank-a                 # required: this appliance's member id in the policy
//	identity: identity             # required: identity folder (identity.yaml + certificates)
//	hsm:
//	  module_path: ""              # PKCS#11 module when a key URI names none
//	  pool_size: 0                 # sessions per key; 0 = 8
//	  insecure_soft_keys: false    # allow "file:" keys in identity.yaml (demo/dev only)
//	policy:
//	  dir: policy                  # required: folder of signed bundles (watched)
//	  state_dir: state             # required: applied policy + anti-rollback record
//	  genesis: "<hex sha-256>"     # required on first start: hash of version 1
//	relay:
//	  proxy: ""                    # http://user:pass@host:port HTTP CONNECT proxy; "" = HTTPS_PROXY
//	  no_env_proxy: false          # ignore HTTPS_PROXY
//	  quic_timeout: 1s             # wait for QUIC before falling back to TCP
//	  reprobe_interval: 30s        # while on TCP, try QUIC again this often
//	tunnel:
//	  rotate_every: 24h            # WireGuard key rotation interval
//	  push_port: 7099              # overlay port of the policy push service; 0 = 7099
//	  forwards:                    # local port -> member:port through the tunnel
//	    - {listen: "127.0.0.1:7051", member: bank-b, port: 7051}
//	  services:                    # overlay port -> LAN host:port
//	    - {port: 7051, target: "10.1.2.3:7051"}
//	admin: 127.0.0.1:9464          # /metrics /healthz /readyz /status /push
//	admin_pprof: false             # also Go's pprof under /debug/pprof/; only with a loopback admin
//	memory_limit: 0                # Go soft memory limit in bytes; 0 = 96 MiB + 4 x ledger.snapshot_bytes, -1 = none; GOMEMLIMIT wins
//	ledger:                        # optional: run the ordering node (consenters only; ledger.go)
//	  listen: ":7050"              # LAN gRPC (Fabric AtomicBroadcast), TLS with the HSM identity
//	  data_dir: ledger             # raft log and block store
//	  genesis_block: genesis.block # channel config block; required while the store is empty
//	  raft_port: 7052              # overlay port of raft between consenters
//	  peer_port: 7050              # overlay port of gRPC between consenters (forwarding, catch-up)
//	  mutual_tls: false            # LAN clients must present a member certificate
//	  admin:                       # optional: channel participation API (osnadmin; ledger_admin.go)
//	    listen: 127.0.0.1:9443     # HTTPS with the HSM identity, client certificates required
//	    client_ca: ca.pem          # required: CA certificate(s) of the admins' client certificates
//	    client_ou: admin           # the OU a client certificate must carry
//	    insecure_plain_http: false # development only: no TLS; listen must be loopback
//	  snapshot_bytes: 4MiB         # raft snapshot size (bytes, or 4MiB, 512KiB); bounds the in-memory log (about twice this)
type Config struct {
	Member   string       `yaml:"member"`
	Identity string       `yaml:"identity"`
	HSM      HSMConfig    `yaml:"hsm"`
	Policy   PolicyConfig `yaml:"policy"`
	Relay    RelayConfig  `yaml:"relay"`
	Tunnel   TunnelConfig `yaml:"tunnel"`
	Admin    string       `yaml:"admin"`
	// AdminPprof serves Go's pprof handlers on the admin endpoint.
	AdminPprof bool `yaml:"admin_pprof"`
	// MemoryLimit is Go's soft memory limit for `memberd run` (memlimit.go).
	MemoryLimit int64         `yaml:"memory_limit"`
	Ledger      *LedgerConfig `yaml:"ledger"`

	// Dir is the directory of the config file: relative paths are
	// relative to it.
	Dir string `yaml:"-"`

	genesis policy.Hash // parsed Policy.Genesis, by Validate
	proxy   *url.URL    // parsed Relay.Proxy, by Validate
}

type HSMConfig struct {
	ModulePath       string `yaml:"module_path"`
	PoolSize         int    `yaml:"pool_size"`
	InsecureSoftKeys bool   `yaml:"insecure_soft_keys"`
}

type PolicyConfig struct {
	Dir      string `yaml:"dir"`
	StateDir string `yaml:"state_dir"`
	Genesis  string `yaml:"genesis"`
}

type RelayConfig struct {
	Proxy       string        `yaml:"proxy"`
	NoEnvProxy  bool          `yaml:"no_env_proxy"`
	QUICTimeout time.Duration `yaml:"quic_timeout"`
	Reprobe     time.Duration `yaml:"reprobe_interval"`
}

type TunnelConfig struct {
	RotateEvery time.Duration `yaml:"rotate_every"`
	PushPort    uint16        `yaml:"push_port"`
	Forwards    []Forward     `yaml:"forwards"`
	Services    []Service     `yaml:"services"`
	// MemberAddrs: one local address per remote member (tunnel.MemberAddrs).
	MemberAddrs *MemberAddrsConfig `yaml:"member_addresses"`
}

type MemberAddrsConfig struct {
	Prefix string   `yaml:"prefix"`
	Ports  []uint16 `yaml:"ports"`
}

// tunnel is the tunnel.MemberAddrs it asks for (nil: none).
func (m *MemberAddrsConfig) tunnel() (*tunnel.MemberAddrs, error) {
	if m == nil {
		return nil, nil
	}
	pfx, err := netip.ParsePrefix(m.Prefix)
	if err != nil {
		return nil, fmt.Errorf("key tunnel.member_addresses.prefix: %q is not an address prefix such as 127.77.0.0/16", m.Prefix)
	}
	t := &tunnel.MemberAddrs{Prefix: pfx, Ports: m.Ports}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("key tunnel.%s", strings.TrimPrefix(err.Error(), tunnel.ErrConfig.Error()+": "))
	}
	return t, nil
}

type Forward struct {
	Listen string `yaml:"listen"`
	Member string `yaml:"member"`
	Port   uint16 `yaml:"port"`
}

type Service struct {
	Port   uint16 `yaml:"port"`
	Target string `yaml:"target"`
}

// DefaultPushPort is the overlay port of the policy push service.
const DefaultPushPort = push.DefaultPort

// WithDefaults returns c with the documented defaults filled in (admin,
// tunnel.push_port, relay.quic_timeout); New applies them too.
func (c Config) WithDefaults() Config {
	if c.Admin == "" {
		c.Admin = admin.DefaultAddr
	}
	if c.Tunnel.PushPort == 0 {
		c.Tunnel.PushPort = DefaultPushPort
	}
	if c.Relay.QUICTimeout == 0 {
		c.Relay.QUICTimeout = time.Second
	}
	return c
}

// GenesisHash is policy.genesis parsed by Validate (zero when unset).
func (c *Config) GenesisHash() policy.Hash { return c.genesis }

// Validate checks the configuration; errors name the key at fault.
func (c *Config) Validate() error {
	if c.Member == "" || len(c.Member) > 32 {
		return fmt.Errorf("key member: %q must be 1..32 characters (this appliance's member id in the policy)", c.Member)
	}
	if c.Identity == "" {
		return errors.New("key identity: required (the identity folder holding identity.yaml and the certificates)")
	}
	if c.HSM.PoolSize < 0 || c.HSM.PoolSize > 256 {
		return fmt.Errorf("key hsm.pool_size: %d must be 0..256 (0 = 8)", c.HSM.PoolSize)
	}
	if c.HSM.ModulePath != "" && !filepath.IsAbs(c.HSM.ModulePath) {
		return fmt.Errorf("key hsm.module_path: %q must be an absolute path", c.HSM.ModulePath)
	}
	if c.Policy.Dir == "" {
		return errors.New("key policy.dir: required (the folder the signed policy bundles are dropped into)")
	}
	if c.Policy.StateDir == "" {
		return errors.New("key policy.state_dir: required (where the applied policy is kept)")
	}
	if c.Policy.Genesis != "" {
		h, err := policy.ParseHash(c.Policy.Genesis)
		if err != nil {
			return fmt.Errorf("key policy.genesis: %v (the hex SHA-256 that 'memberd policy show' prints for version 1)", err)
		}
		c.genesis = h
	}
	if c.Relay.Proxy != "" {
		u, err := url.Parse(c.Relay.Proxy)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("key relay.proxy: %q is not http://[user:pass@]host:port", c.Relay.Proxy)
		}
		c.proxy = u
	}
	if err := c.validateMemoryLimit(); err != nil {
		return err
	}
	if c.Relay.QUICTimeout < 0 {
		return errors.New("key relay.quic_timeout: must not be negative")
	}
	if c.Relay.Reprobe < 0 {
		return errors.New("key relay.reprobe_interval: must not be negative (0 = 30s)")
	}
	if c.Tunnel.RotateEvery < 0 || (c.Tunnel.RotateEvery > 0 && c.Tunnel.RotateEvery < time.Minute) {
		return fmt.Errorf("key tunnel.rotate_every: %v must be at least 1m (0 = 24h)", c.Tunnel.RotateEvery)
	}
	for i, f := range c.Tunnel.Forwards {
		if _, _, err := net.SplitHostPort(f.Listen); err != nil {
			return fmt.Errorf("key tunnel.forwards[%d].listen: %q is not host:port", i, f.Listen)
		}
		if f.Member == "" || f.Port == 0 {
			return fmt.Errorf("key tunnel.forwards[%d]: member and port are required", i)
		}
	}
	for i, s := range c.Tunnel.Services {
		if s.Port == 0 || s.Port == c.Tunnel.PushPort {
			return fmt.Errorf("key tunnel.services[%d].port: %d must be set and differ from tunnel.push_port %d", i, s.Port, c.Tunnel.PushPort)
		}
		if _, _, err := net.SplitHostPort(s.Target); err != nil {
			return fmt.Errorf("key tunnel.services[%d].target: %q is not host:port", i, s.Target)
		}
	}
	if _, err := c.Tunnel.MemberAddrs.tunnel(); err != nil {
		return err
	}
	if _, port, err := net.SplitHostPort(c.Admin); err != nil || port == "" {
		return fmt.Errorf("key admin: %q is not host:port", c.Admin)
	}
	if err := admin.CheckPprof("admin_pprof", c.AdminPprof, c.Admin); err != nil {
		return err
	}
	if c.Ledger != nil {
		if err := c.Ledger.validate(c.Tunnel.PushPort, c.Tunnel.Services); err != nil {
			return err
		}
	}
	return nil
}

// Path resolves a file name from the config relative to its directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "pkcs11:") {
		return p
	}
	return filepath.Join(c.Dir, p)
}

// warnIgnoredEnvProxy says when relay.no_env_proxy makes the appliance
// ignore a proxy set in its environment (HTTPS_PROXY, https_proxy): without
// a word, a host that can leave only through that proxy sees nothing but
// dial timeouts. An explicit relay.proxy is used either way: no warning.
func warnIgnoredEnvProxy(log *slog.Logger, c *Config, getenv func(string) string) {
	if !c.Relay.NoEnvProxy || c.proxy != nil {
		return
	}
	for _, name := range []string{"HTTPS_PROXY", "https_proxy"} {
		v := getenv(name)
		if v == "" {
			continue
		}
		shown := "(unparsable)"
		if u, err := url.Parse(v); err == nil {
			shown = u.Redacted()
		}
		log.Warn("the proxy in the environment is ignored because relay.no_env_proxy is true: relays are dialled directly; "+
			"set relay.no_env_proxy: false (or relay.proxy) in the config file if this host reaches the relays only through it",
			"env", name, "proxy", shown, "config_dir", c.Dir)
		return
	}
}

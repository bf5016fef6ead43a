package appliance

// The ledger node inside 'memberd run' (ledger: section of memberd.yaml).
//
// Wiring, per appliance:
//
//	raft        node/raftlog over the TUNNEL: peer address "member-id:raft_port"
//	            is dialed with Device.Dial(ctx, member, raft_port); inbound
//	            raft connections come from Device.Listen(raft_port). The
//	            tunnel authenticates members, so raft runs without its own TLS.
//	raft IDs    genesis consenters 1..N, added ones derived from the member
//	            id; consenter changes are applied live (ledger_consenters.go).
//	gRPC LAN    Fabric AtomicBroadcast on ledger.listen (default :7050), TLS
//	            with the HSM identity; client certificates required with
//	            ledger.mutual_tls.
//	gRPC peers  the same service on the overlay port ledger.peer_port (default
//	            7050), always mutual TLS. Followers forward Broadcast to the
//	            leader (orderer.BroadcastForwarder) and a node behind a raft
//	            snapshot pulls blocks (orderer.DeliverFetcher) through it.
//	osnadmin    the channel participation API on ledger.admin.listen, HTTPS
//	            with client certificates required (ledger_admin.go).
//	admin       the "ledger" readiness check and the ledger part of /status
//	            on the appliance's admin address.
//
// The channel's genesis (config) block is a file (ledger.genesis_block) that
// every consenter must share byte for byte: 'memberd ledger channel create'
// or 'memberd demo init' write it. It is needed only while the block store is
// empty.
//
// Several channels (the policy's ledger.channels): one ordering node per
// channel this member orders, each with its own raft group, block store and
// genesis block (ledger.genesis_blocks), working with the policy's view of
// its channel (policy.Policy.ForChannel); all share the gRPC servers, the
// participation API, the gRPC clients to the other consenters and the raft
// port, which routes each inbound connection by the channel its raft hello
// names (ledger_listener.go).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"

	"github.com/memberd/memberd/identity"
	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/node/participation"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/tunnel"
)

// Ledger defaults (docs/appliance.md).
const (
	DefaultLedgerListen   = ":7050"
	DefaultLedgerDataDir  = "ledger"
	DefaultLedgerRaftPort = 7052
	DefaultLedgerPeerPort = orderer.DefaultPort
)

// LedgerConfig is the ledger: section of memberd.yaml.
type LedgerConfig struct {
	Listen       string `yaml:"listen"`        // LAN gRPC address; "" = :7050
	DataDir      string `yaml:"data_dir"`      // raft log and block store; "" = ledger
	GenesisBlock string `yaml:"genesis_block"` // channel config block; required while the store is empty
	// GenesisBlocks are more genesis blocks, one per channel of the
	// policy's ledger.channels (each block names its channel).
	GenesisBlocks []string `yaml:"genesis_blocks"`
	RaftPort      uint16   `yaml:"raft_port"`  // overlay port of raft; 0 = 7052
	PeerPort      uint16   `yaml:"peer_port"`  // overlay port of gRPC between consenters; 0 = 7050
	MutualTLS     bool     `yaml:"mutual_tls"` // LAN clients must present a member certificate
	// ConfigBlocks: order CONFIG blocks for policy versions (orderer.Config.ConfigBlocks).
	ConfigBlocks bool `yaml:"config_blocks"`
	// Admin serves the channel participation API (osnadmin); nil = not served
	// (ledger_admin.go).
	Admin *LedgerAdminConfig `yaml:"admin"`
	// SnapshotBytes bounds raft's in-memory log: a snapshot once the blocks
	// ordered since the last one hold this many bytes (Fabric etcdraft's
	// SnapshotIntervalSize); memory holds about twice this. 0 = 4 MiB.
	// A number of bytes or a size like 4MiB.
	SnapshotBytes confyaml.ByteSize `yaml:"snapshot_bytes"`
}

// minSnapshotBytes is the smallest ledger.snapshot_bytes accepted.
const minSnapshotBytes = 1 << 20

// validate applies the defaults and checks the section; pushPort and
// services are the other overlay ports in use.
func (l *LedgerConfig) validate(pushPort uint16, services []Service) error {
	if l.Listen == "" {
		l.Listen = DefaultLedgerListen
	}
	if l.DataDir == "" {
		l.DataDir = DefaultLedgerDataDir
	}
	if l.RaftPort == 0 {
		l.RaftPort = DefaultLedgerRaftPort
	}
	if l.PeerPort == 0 {
		l.PeerPort = DefaultLedgerPeerPort
	}
	if _, _, err := net.SplitHostPort(l.Listen); err != nil {
		return fmt.Errorf("key ledger.listen: %q is not host:port", l.Listen)
	}
	if l.Admin != nil {
		if err := l.Admin.validate(); err != nil {
			return err
		}
	}
	if l.SnapshotBytes == 0 {
		l.SnapshotBytes = raftlog.DefaultSnapshotBytes
	}
	if l.SnapshotBytes < minSnapshotBytes {
		return fmt.Errorf("key ledger.snapshot_bytes: %d is below %d (1 MiB); leave it out for the default %d (4 MiB)", l.SnapshotBytes, minSnapshotBytes, raftlog.DefaultSnapshotBytes)
	}
	if l.RaftPort == l.PeerPort {
		return fmt.Errorf("keys ledger.raft_port and ledger.peer_port: both %d; they must differ", l.RaftPort)
	}
	for _, p := range []struct {
		key  string
		port uint16
	}{{"ledger.raft_port", l.RaftPort}, {"ledger.peer_port", l.PeerPort}} {
		if p.port == pushPort {
			return fmt.Errorf("key %s: %d is tunnel.push_port", p.key, p.port)
		}
		for i, s := range services {
			if s.Port == p.port {
				return fmt.Errorf("key %s: %d is also tunnel.services[%d].port", p.key, p.port, i)
			}
		}
	}
	return nil
}

// ErrLedger: the ledger node could not start.
var ErrLedger = errors.New("ledger")

// ledgerDevice is what the ledger needs of the tunnel (*tunnel.Device).
type ledgerDevice interface {
	Dial(ctx context.Context, member string, port uint16) (*tunnel.Conn, error)
	Listen(port uint16) (*tunnel.Listener, error)
	OnRekeyed(fn func(member string)) (stop func())
}

var _ ledgerDevice = (*tunnel.Device)(nil)

// tunnelDialer is a raftlog.Dialer (and gRPC dialer) over the tunnel:
// address "member-id:port" dials Device.Dial(ctx, member, port). The
// connections are tracked so that those to a restarted member are closed
// (see peerWatch).
type tunnelDialer struct {
	dev   ledgerDevice
	watch *peerWatch
}

var _ raftlog.Dialer = tunnelDialer{}

// DialContext implements raftlog.Dialer.
func (t tunnelDialer) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	member, port, err := splitMemberPort(addr)
	if err != nil {
		return nil, err
	}
	c, err := t.dev.Dial(ctx, member, port)
	if err != nil {
		return nil, err // never a typed nil
	}
	if t.watch == nil {
		return c, nil
	}
	return t.watch.track(member, c), nil
}

func splitMemberPort(addr string) (string, uint16, error) {
	member, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("tunnel address %q: want member-id:port: %w", addr, err)
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 || member == "" {
		return "", 0, fmt.Errorf("tunnel address %q: want member-id:port", addr)
	}
	return member, uint16(p), nil
}

// ledgerChannel is one channel the ledger orders: its own raft group,
// block store and genesis, with the policy's view of it
// (policy.ForChannel).
type ledgerChannel struct {
	name      string
	rs        ledgerRaft
	ids       map[uint64]string // raft id -> member id, as known at start
	genesis   *common.Block     // nil when none is at hand
	fetchFrom fetchPeers
	fwd       *orderer.BroadcastForwarder
	view      atomic.Pointer[policy.Policy] // the last view of the channel
	retained  atomic.Pointer[policy.Policy] // view kept under a policy that dropped it (viewOf)
	// dropped: a policy version no longer lists the channel; its node
	// stopped ordering and its blocks stay readable (ledger_live.go).
	dropped atomic.Bool
}

// ledgerRun is the running ledger of an appliance.
type ledgerRun struct {
	cfg     LedgerConfig
	member  string
	channel string // the first channel opened (LedgerChannel, single-channel callers)
	// names and chans grow when a policy version adds a channel this
	// member orders (ledger_live.go): read them with channelNames and
	// chanOf.
	chansMu sync.Mutex
	// liveMu serializes channelsChanged: the policy subscription and the
	// catch-up at start (catchUp) may both apply the same version.
	liveMu  sync.Mutex
	planned *policy.Policy // the policy version the channels were planned from
	names   []string
	chans   map[string]*ledgerChannel
	mspID   string
	open    ledgerOpen // what opening a channel while running needs
	// ident and cert are the identity in use (block signatures, Deliver
	// requests, TLS on both gRPC servers and the peer clients): swapped by
	// setIdentity when the HSM identity folder rotates.
	ident   atomic.Pointer[orderer.Identity]
	cert    atomic.Pointer[tls.Certificate]
	reg     *orderer.Registry
	lan     *grpc.Server
	overlay *grpc.Server
	lanLn   net.Listener
	ovLn    net.Listener
	raftLn  *portListener // the raft port, bound for the ledger's life
	clients *ledgerClients
	admin   *ledgerAdmin // the participation API; nil without ledger.admin
	log     *slog.Logger
	dev     ledgerDevice
	watch   *peerWatch
	unwatch func() // stops the tunnel's OnRekeyed calls to watch

	closeOnce sync.Once
}

// slowLedgerStart is the start-up time above which startLedger says where
// it went.
const slowLedgerStart = time.Second

// startLedger opens the channels of the policy's ledger section that this
// member orders and starts their ordering nodes (raft over dev). It does
// not serve gRPC yet: serve does.
func startLedger(cfg *Config, dev ledgerDevice, id *identity.Identity, pol func() *policy.Policy,
	reg prometheus.Registerer, log *slog.Logger) (_ *ledgerRun, err error) {
	lc := *cfg.Ledger
	log = log.With("component", "ledger")
	p := pol()
	me := p.Member(cfg.Member)
	if me == nil {
		return nil, fmt.Errorf("%w: member %q is not in the policy", ErrLedger, cfg.Member)
	}
	l := &ledgerRun{cfg: lc, member: cfg.Member, chans: map[string]*ledgerChannel{}, log: log, mspID: me.MSPID, planned: p}
	l.storeIdentity(id)
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	t0 := time.Now()
	genesis, err := loadGenesisBlocks(cfg, p)
	if err != nil {
		return nil, err
	}
	l.open = ledgerOpen{dataDir: cfg.Path(lc.DataDir), history: policyHistory(cfg.Path(cfg.Policy.StateDir), log), idFile: id.File}
	if err := l.planChannels(cfg, p, genesis); err != nil {
		return nil, err
	}
	t1 := time.Now()
	if err := l.connectPeers(dev, pol, newDeliverBytes(reg)); err != nil {
		return nil, err
	}
	metrics := orderer.NewMetrics(reg)
	t2 := time.Now()
	if err := l.openChannels(cfg, pol, reg, metrics, id); err != nil {
		return nil, err
	}
	t3 := time.Now()
	if err := l.startServers(cfg, pol, reg, metrics); err != nil {
		return nil, err
	}
	if total := time.Since(t0); total > slowLedgerStart {
		log.Info("ledger start-up was slow", "seconds", total.Seconds(), "plan_seconds", t1.Sub(t0).Seconds(),
			"connect_peers_seconds", t2.Sub(t1).Seconds(), "open_channels_seconds", t3.Sub(t2).Seconds(), "servers_seconds", time.Since(t3).Seconds())
	}
	for _, name := range l.names {
		c := l.chans[name]
		var height uint64
		if n := l.reg.Lookup(name); n != nil {
			height = n.Height()
		}
		log.Info("ledger node started", "channel", name, "raft_id", c.rs.id, "joining", c.rs.join, "listen", l.lanLn.Addr().String(),
			"raft_port", lc.RaftPort, "peer_port", lc.PeerPort, "consenters", len(c.rs.peers), "height", height)
	}
	return l, nil
}

// planChannels decides which channels this member orders and how it takes
// part in each raft group: those whose consenters list it, and those it
// has a raft log of (a consenter removed since, whose node stays
// readable). A single-channel policy (ledger.channel) is planned as it
// always was, with its errors.
func (l *ledgerRun) planChannels(cfg *Config, p *policy.Policy, genesis map[string]*common.Block) error {
	multi := len(p.Ledger().Channels) > 0
	for _, name := range p.Channels() {
		v, err := p.ForChannel(name)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrLedger, err)
		}
		raftDir := filepath.Join(cfg.Path(l.cfg.DataDir), name, "raft")
		stored, _, err := raftlog.StoredID(raftDir)
		if err != nil {
			return fmt.Errorf("%w: raft log in %s: %w", ErrLedger, raftDir, err)
		}
		if multi && stored == 0 && !slices.Contains(v.Ledger().Consenters, l.member) {
			continue // another channel's consenters order it
		}
		g := genesis[name]
		if g == nil && multi && stored == 0 {
			// A channel a policy version added (ledger_live.go); for any
			// other, the error at its opening asks for its genesis block.
			if g, err = derivedGenesis(p, name, l.open.history); err != nil {
				l.log.Debug("no genesis block derived", "channel", name, "err", err)
				g = nil
			}
		}
		c, err := l.newChannel(name, v, stored, g)
		if err != nil {
			return err
		}
		l.chans[name] = c
		l.names = append(l.names, name)
	}
	if len(l.names) == 0 {
		return fmt.Errorf("%w: member %q orders none of the policy's ledger.channels (%s): only a channel's consenters run its node; "+
			"add the member to a channel's consenters, or remove the ledger section", ErrLedger, l.member, strings.Join(p.Channels(), ", "))
	}
	l.channel = l.names[0]
	return nil
}

// loadGenesisBlocks reads ledger.genesis_block and ledger.genesis_blocks
// and checks that each is a config block of a channel of the policy, one
// per channel. Channels without one are missing from the map.
func loadGenesisBlocks(cfg *Config, p *policy.Policy) (map[string]*common.Block, error) {
	lc := cfg.Ledger
	out := map[string]*common.Block{}
	files := lc.GenesisBlocks
	if lc.GenesisBlock != "" {
		files = append([]string{lc.GenesisBlock}, files...)
	}
	for i, f := range files {
		key := "ledger.genesis_blocks"
		if i == 0 && lc.GenesisBlock != "" {
			key = "ledger.genesis_block"
		}
		b, err := loadGenesisBlock(cfg.Path(f), key, p)
		if err != nil {
			return nil, err
		}
		ch := channelOf(b)
		if out[ch] != nil {
			return nil, fmt.Errorf("%w: key %s: %s is a second genesis block of channel %q", ErrLedger, key, cfg.Path(f), ch)
		}
		out[ch] = b
	}
	return out, nil
}

// channelOf is the channel id of a block's first envelope ("" if unreadable).
func channelOf(b *common.Block) string {
	ch, err := channelconfig.Parse(b)
	if err != nil {
		return ""
	}
	return ch.Config.ChannelID
}

// loadGenesisBlock reads the genesis block file (named by key) and checks
// it is a config block of a channel of p.
func loadGenesisBlock(file, key string, p *policy.Policy) (*common.Block, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: key %s: %w", ErrLedger, key, err)
	}
	genesis, err := block.Unmarshal(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: key %s %s: %w", ErrLedger, key, file, err)
	}
	ch, err := channelconfig.Parse(genesis)
	if err != nil {
		return nil, fmt.Errorf("%w: key %s %s is not a channel config block: %w", ErrLedger, key, file, err)
	}
	if _, err := p.ForChannel(ch.Config.ChannelID); err != nil {
		if len(p.Ledger().Channels) == 0 {
			return nil, fmt.Errorf("%w: key %s: channel %q, but the policy's ledger.channel is %q", ErrLedger, key, ch.Config.ChannelID, p.Ledger().Channel)
		}
		return nil, fmt.Errorf("%w: key %s: %s is the genesis block of channel %q, which is not in the policy's ledger.channels (%s)",
			ErrLedger, key, file, ch.Config.ChannelID, strings.Join(p.Channels(), ", "))
	}
	return genesis, nil
}

// viewOf is channel c's view of p (policy.ForChannel); when p no longer
// lists the channel, its last view kept under p (policy.Retain): the
// channel keeps its last ledger section and members until an operator
// removes it, but its Deliver admission follows p's members, CAs, CRLs
// and revocations.
func (l *ledgerRun) viewOf(c *ledgerChannel, p *policy.Policy) *policy.Policy {
	if p == nil {
		return nil
	}
	v, err := p.ForChannel(c.name)
	if err == nil {
		c.view.Store(v)
		return v
	}
	last := c.view.Load()
	if last == nil {
		return nil
	}
	if r := c.retained.Load(); r != nil && r.Whole() == p {
		return r
	}
	r := p.Retain(last)
	c.retained.Store(r)
	return r
}

// fetchPeers are the consenters a node behind a snapshot fetches blocks
// from: clients[i] is member members[i].
type fetchPeers struct {
	clients []ab.AtomicBroadcastClient
	members []string
}

// connectPeers sets up the gRPC clients to the other consenters through the
// tunnel (mutual TLS with the member CAs as roots) and, per channel, the
// forwarder to its raft leader and the clients a node behind a snapshot
// fetches blocks from.
func (l *ledgerRun) connectPeers(dev ledgerDevice, pol func() *policy.Policy, fetched stats.Handler) error {
	l.dev, l.watch = dev, &peerWatch{log: l.log}
	l.unwatch = dev.OnRekeyed(l.watch.rekeyed)
	dialer := tunnelDialer{dev: dev, watch: l.watch}
	l.clients = &ledgerClients{port: l.cfg.PeerPort, stats: fetched,
		dial: func(ctx context.Context, addr string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) },
		tls:  func() *tls.Config { return l.clientTLS(pol().CAPool()) }}
	for _, name := range l.names {
		if err := l.connectChannel(l.chans[name]); err != nil {
			return err
		}
	}
	return nil
}

// isLeader reports whether member is channel's raft leader now.
func (l *ledgerRun) isLeader(channel, member string) bool {
	n := l.reg.Lookup(channel)
	return n != nil && member != "" && l.memberOf(channel, n.Raft().Leader()) == member
}

// openChannels binds the raft port, opens each channel's ordering node
// (raft over the tunnel, all on that one port) and starts it.
func (l *ledgerRun) openChannels(cfg *Config, pol func() *policy.Policy, reg prometheus.Registerer, metrics *orderer.Metrics, id *identity.Identity) error {
	lc, log := &l.cfg, l.log
	dialer := tunnelDialer{dev: l.dev, watch: l.watch}
	dataDir := cfg.Path(lc.DataDir)
	rawRaftLn, err := l.dev.Listen(lc.RaftPort)
	if err != nil {
		return fmt.Errorf("%w: raft on overlay port %d (key ledger.raft_port): %w", ErrLedger, lc.RaftPort, err)
	}
	l.raftLn = newPortListener(rawRaftLn, log) // bound once: see ledger_listener.go
	l.reg = &orderer.Registry{Logger: log, Open: func(channel string, b *common.Block) (*orderer.Node, error) {
		c := l.chanOf(channel)
		if c == nil {
			return nil, fmt.Errorf("%w: this appliance orders the policy's channels %s, not %q", orderer.ErrInvalidConfig, strings.Join(l.channelNames(), ", "), channel)
		}
		ln, err := l.raftLn.view(channel)
		if err != nil {
			return nil, fmt.Errorf("raft on overlay port %d (key ledger.raft_port): %w", lc.RaftPort, err)
		}
		ident := *l.ident.Load()
		rs := c.rs
		n, err := orderer.New(orderer.Config{
			Raft: raftlog.Config{ID: rs.id, Peers: rs.peers, Join: rs.join, Dir: filepath.Join(dataDir, channel, "raft"),
				Dialer: dialer, Listener: ln, SnapshotBytes: uint64(lc.SnapshotBytes), Registerer: reg, Logger: log.With("sub", "raft", "channel", channel)},
			BlockDir: filepath.Join(dataDir, channel, "blocks"), Genesis: b,
			Signer: ident.Signer, Identity: ident.Serialized(),
			Policy:        func() *policy.Policy { return l.viewOf(c, pol()) },
			PolicyHistory: l.channelHistory(c, l.open.history),
			Fetcher: &orderer.DeliverFetcher{Peers: c.fetchFrom.clients, Channel: channel,
				CurrentIdentity: func() orderer.Identity { return *l.ident.Load() },
				Leader:          func(i int) bool { return l.isLeader(channel, c.fetchFrom.members[i]) }},
			Forwarder: c.fwd, Membership: l.membership(), ConfigBlocks: lc.ConfigBlocks, Metrics: metrics, Logger: log}) // the node adds "channel"
		if err != nil {
			ln.Close()
			return nil, err
		}
		return n, nil
	}}
	for _, name := range l.names {
		c := l.chans[name]
		n, err := l.reg.Open(name, c.genesis)
		if err != nil {
			if errors.Is(err, orderer.ErrSigner) {
				return fmt.Errorf("%w: identity folder %s: %w", ErrLedger, id.File, err)
			}
			return fmt.Errorf("%w: channel %q in %s: %w (on first start, key ledger.genesis_block or ledger.genesis_blocks must name the channel's genesis block)",
				ErrLedger, name, dataDir, err)
		}
		if err := l.startOpened(n); err != nil {
			return fmt.Errorf("%w: %w", ErrLedger, err)
		}
	}
	if reg != nil {
		reg.MustRegister(orderer.NewRegistryCollector(l.reg))
	}
	return nil
}

// startOpened starts node n, just opened (Registry.Open), once the
// identity's certificate names every address served for its channel
// (checkServedNames); on error n is closed.
func (l *ledgerRun) startOpened(n *orderer.Node) error {
	if err := checkServedNames(l.ident.Load().Cert, l.cfg.served(), n.ChannelConfig(), l.mspID); err != nil {
		n.Close()
		return fmt.Errorf("identity folder %s: %w", l.open.idFile, err)
	}
	if err := l.reg.Start(n); err != nil {
		n.Close()
		return err
	}
	return nil
}

// channelHistory is history with each version seen as channel c's view.
func (l *ledgerRun) channelHistory(c *ledgerChannel, history func(policy.Hash) *policy.Policy) func(policy.Hash) *policy.Policy {
	return func(h policy.Hash) *policy.Policy {
		p := history(h)
		if p == nil {
			return nil
		}
		v, err := p.ForChannel(c.name)
		if err != nil {
			return nil
		}
		return v
	}
}

// startServers builds the gRPC servers (LAN and overlay) and the channel
// participation API, and binds their ports; serve serves them.
func (l *ledgerRun) startServers(cfg *Config, pol func() *policy.Policy, reg prometheus.Registerer, metrics *orderer.Metrics) error {
	lc, log := &l.cfg, l.log
	srv, err := orderer.NewServer(orderer.ServerConfig{Lookup: l.reg.Lookup, Metrics: metrics, Logger: log})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLedger, err)
	}
	ph, err := participation.New(participation.Config{Registry: l.reg, Logger: log})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLedger, err)
	}
	if lc.Admin != nil {
		if l.admin, err = openLedgerAdmin(cfg, *lc.Admin, ph, l.cert.Load, log); err != nil {
			return err
		}
	} else {
		log.Info("channel participation API (osnadmin) not served: no ledger.admin section")
	}
	opts := append(orderer.ServerOptions(), orderer.RecoveryOptions(log, metrics)...)
	opts = append(opts, grpc.ConnectionTimeout(ledgerHandshakeTimeout))
	tlsFailures := newLedgerTLSFailures(reg)
	l.lan = grpc.NewServer(append(opts[:len(opts):len(opts)],
		grpc.Creds(countTLSFailures(credentials.NewTLS(l.serverTLS(pol, lc.MutualTLS)), "lan", tlsFailures, log)))...)
	srv.Register(l.lan)
	l.overlay = grpc.NewServer(append(opts[:len(opts):len(opts)],
		grpc.Creds(countTLSFailures(credentials.NewTLS(l.serverTLS(pol, true)), "overlay", tlsFailures, log)))...)
	srv.Register(l.overlay)
	if l.lanLn, err = net.Listen("tcp", lc.Listen); err != nil {
		return fmt.Errorf("%w: gRPC on %s (key ledger.listen): %w", ErrLedger, lc.Listen, err)
	}
	if l.ovLn, err = l.dev.Listen(lc.PeerPort); err != nil {
		return fmt.Errorf("%w: gRPC on overlay port %d (key ledger.peer_port): %w", ErrLedger, lc.PeerPort, err)
	}
	return nil
}

// storeIdentity makes id the identity of the TLS handshakes and Deliver
// requests from now on.
func (l *ledgerRun) storeIdentity(id *identity.Identity) {
	oid := orderer.Identity{MSPID: l.mspID, Cert: id.Certificate, Signer: id.Signer}
	cert := orderer.TLSCertificate(oid, id.Chain...)
	l.ident.Store(&oid)
	l.cert.Store(&cert)
}

// setIdentity follows an HSM identity rotation without a restart: the node
// signs the next blocks with the new key, and new TLS handshakes (LAN and
// overlay servers, peer clients) present the new certificate. Connections
// already open keep theirs. A certificate that the channel config would
// reject as block signer (orderer.CheckSigner) or without a SAN for an
// address the ledger serves (checkServedNames) is refused: the ledger keeps
// the identity it has.
func (l *ledgerRun) setIdentity(id *identity.Identity) error {
	var nodes []*orderer.Node
	for _, name := range l.orderingNames() {
		n := l.reg.Lookup(name)
		if n == nil {
			continue // removed through the participation API
		}
		if err := checkServedNames(id.Certificate, l.cfg.served(), n.ChannelConfig(), l.mspID); err != nil {
			return fmt.Errorf("%w: channel %q: %w", ErrLedger, name, err)
		}
		nodes = append(nodes, n)
	}
	if len(nodes) == 0 {
		return fmt.Errorf("%w: no channel is open (%s)", ErrLedger, strings.Join(l.channelNames(), ", "))
	}
	oid := orderer.Identity{MSPID: l.mspID, Cert: id.Certificate, Signer: id.Signer}
	for _, n := range nodes {
		if err := n.SetIdentity(oid.Signer, oid.Serialized()); err != nil {
			return fmt.Errorf("%w: %w", ErrLedger, err)
		}
	}
	l.storeIdentity(id)
	return nil
}

// serverTLS is orderer.ServerTLS presenting the current certificate.
func (l *ledgerRun) serverTLS(pol func() *policy.Policy, mutual bool) *tls.Config {
	c := orderer.ServerTLS(tls.Certificate{}, pol, mutual)
	c.Certificates = nil
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return l.cert.Load(), nil }
	return c
}

// clientTLS is orderer.ClientTLS presenting the current certificate.
func (l *ledgerRun) clientTLS(roots *x509.CertPool) *tls.Config {
	c := orderer.ClientTLS(nil, roots)
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return l.cert.Load(), nil }
	return c
}

// serve serves gRPC on the LAN and overlay listeners until ctx ends, then
// closes the ledger.
func (l *ledgerRun) serve(ctx context.Context) error {
	servers := 2
	errc := make(chan error, 3)
	go func() { errc <- l.lan.Serve(l.lanLn) }()
	go func() { errc <- l.overlay.Serve(l.ovLn) }()
	if l.admin != nil {
		servers++
		go func() {
			if err := l.admin.serve(); err != nil {
				errc <- err
				return
			}
			errc <- errors.New("channel participation API stopped")
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("%w: server stopped: %w", ErrLedger, err)
		servers--
	}
	l.Close()
	for ; servers > 0; servers-- {
		<-errc
	}
	return err
}

// Addr is the bound LAN gRPC address.
func (l *ledgerRun) Addr() string { return l.lanLn.Addr().String() }

// Close stops the servers and the node. Idempotent.
func (l *ledgerRun) Close() error {
	var err error
	l.closeOnce.Do(func() {
		if l.lan != nil {
			l.lan.Stop()
		}
		if l.overlay != nil {
			l.overlay.Stop()
		}
		if l.lanLn != nil {
			l.lanLn.Close()
		}
		if l.admin != nil {
			l.admin.Close()
		}
		if l.ovLn != nil {
			l.ovLn.Close()
		}
		for _, name := range l.channelNames() {
			if c := l.chanOf(name); c != nil && c.fwd != nil {
				c.fwd.Close()
			}
		}
		if l.reg != nil {
			err = l.reg.Close()
		}
		if l.raftLn != nil {
			l.raftLn.Close()
		}
		if l.clients != nil {
			l.clients.close()
		}
		if l.unwatch != nil {
			l.unwatch()
		}
	})
	return err
}

// AdminAddr is the bound address of the channel participation API ("" if
// not served).
func (l *ledgerRun) AdminAddr() string {
	if l.admin == nil {
		return ""
	}
	return l.admin.Addr()
}

// ready is the "ledger" readiness check: every channel's node runs and
// knows a leader.
func (l *ledgerRun) ready(context.Context) error {
	for _, name := range l.orderingNames() {
		n := l.reg.Lookup(name)
		if n == nil {
			return fmt.Errorf("channel %q is not open", name)
		}
		if err := n.Healthy(); err != nil {
			if len(l.channelNames()) > 1 {
				return fmt.Errorf("channel %q: %w", name, err)
			}
			return err
		}
	}
	return nil
}

// status is the ledger part of /status: the first channel's fields at the
// top (as with one channel) and every channel under "channels".
func (l *ledgerRun) status() any {
	if l == nil {
		return "not configured (no ledger section)"
	}
	st := map[string]any{"listen": l.Addr(), "raft_port": l.cfg.RaftPort, "peer_port": l.cfg.PeerPort}
	st["participation_listen"] = l.AdminAddr()                           // "" = not served (no ledger.admin)
	st["certificate_serial"] = l.ident.Load().Cert.SerialNumber.String() // signs blocks, presented on TLS
	var chans []map[string]any
	for _, name := range l.channelNames() {
		cs := l.channelStatus(name)
		chans = append(chans, cs)
		if name == l.channel {
			for k, v := range cs {
				st[k] = v
			}
		}
	}
	st["channels"] = chans
	return st
}

// channelStatus is one channel's part of /status.
func (l *ledgerRun) channelStatus(channel string) map[string]any {
	st := map[string]any{"channel": channel}
	n := l.reg.Lookup(channel)
	if n == nil {
		st["state"] = "closed"
		return st
	}
	if c := l.chanOf(channel); c != nil && c.dropped.Load() {
		// A policy version no longer lists it (ledger_live.go).
		st["dropped"] = true
		st["state"] = "dropped: no longer in the policy's ledger.channels; this node no longer orders it, its blocks stay readable until the next start"
		st["height"] = n.Height()
		return st
	}
	rs := n.Raft().Status()
	st["height"] = n.Height()
	st["raft_id"] = rs.ID
	st["raft_state"] = rs.State
	st["term"] = rs.Term
	st["raft_commit"] = rs.Commit
	st["raft_applied"] = rs.Applied
	st["leader"] = l.memberOf(channel, rs.Leader) // "" = none known
	st["consenters"] = consenterStatus(n)
	st["leader_raft_id"] = rs.Leader
	// The policy version the raft membership follows (that of its last
	// change; 0: none recorded) beside this node's own: a node whose
	// policy is older makes no consenter change while it leads.
	st["consenters_policy_version"] = rs.MembershipVersion
	if p := n.Policy(); p != nil {
		st["policy_version"] = p.Version()
	}
	err := n.Healthy()
	// removed: dropped from ledger.consenters; raft_retired: it has
	// settled (no campaign, peers redialed only every few seconds).
	st["removed"] = errors.Is(err, orderer.ErrRemoved)
	st["raft_retired"] = rs.Retired
	if err != nil {
		st["state"] = err.Error()
	} else {
		st["state"] = "active"
	}
	return st
}

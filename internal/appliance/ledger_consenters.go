package appliance

// Live consenter changes in the appliance: which raft ID this appliance
// has, and gRPC clients to consenters that may change while it runs.
//
//	raft IDs    the genesis consenters keep 1..N (their order in the genesis
//	            block, which is ledger.consenters of the policy the channel
//	            was created with); a consenter added later has
//	            orderer.AddedConsenterID(channel, member). A restart reads
//	            the ID its raft log was written for (raftlog.StoredID); the
//	            log records who is who (member id and address per raft ID).
//	changes     the raft leader applies ledger.consenters changes of the
//	            policy (orderer.Membership), one conf change at a time; a
//	            policy change nudges it (ledgerRun.policyChanged).
//	joining     an appliance whose member is a consenter of the policy but
//	            was not one of the genesis block starts with an empty raft
//	            log (Join) and the genesis block, and catches up from the
//	            leader (raft snapshot, then blocks over Deliver).

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"

	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

// ledgerRaft is how this appliance takes part in the channel's raft cluster.
type ledgerRaft struct {
	id    uint64
	join  bool           // a consenter added to the running cluster, first start
	peers []raftlog.Peer // raftlog.Config.Peers
}

// planLedgerRaft decides this appliance's raft ID and start mode. stored is
// the ID of an existing raft log (0: none), genesis the genesis block's
// consenters (orderer.GenesisConsenters; nil when no genesis block is at
// hand). Pure.
func planLedgerRaft(member, channel string, stored uint64, p *policy.Policy, genesis []string, raftPort uint16) (ledgerRaft, error) {
	addr := func(m string) string { return net.JoinHostPort(m, strconv.Itoa(int(raftPort))) }
	self := raftlog.Peer{Addr: addr(member), Name: member}
	var r ledgerRaft
	if stored != 0 {
		// The log knows the membership; the policy's positions (the IDs of
		// versions before the log recorded member ids) only fill in what a
		// log of such a version lacks, and never this node's own ID.
		r.id = stored
		for i, m := range p.Consenters() {
			if id := uint64(i + 1); id != stored && m.ID != member {
				r.peers = append(r.peers, raftlog.Peer{ID: id, Addr: addr(m.ID), Name: m.ID})
			}
		}
		self.ID = stored
		r.peers = append(r.peers, self)
		return r, nil
	}
	if !slices.ContainsFunc(p.Consenters(), func(m *policy.Member) bool { return m.ID == member }) {
		return r, fmt.Errorf("%w: member %q is not in the policy's ledger.consenters (%s): only consenters run the ledger node; remove the ledger section",
			ErrLedger, member, ConsenterIDs(p))
	}
	if genesis == nil {
		// No genesis block at hand (the block store exists): positions.
		for i, m := range p.Consenters() {
			if m.ID == member {
				r.id = uint64(i + 1)
			}
			r.peers = append(r.peers, raftlog.Peer{ID: uint64(i + 1), Addr: addr(m.ID), Name: m.ID})
		}
		return r, nil
	}
	if i := slices.Index(genesis, member); i >= 0 {
		r.id = uint64(i + 1)
		for j, m := range genesis {
			if m == "" {
				return r, fmt.Errorf("%w: consenter %d of the genesis block is not a member of the current policy: this member cannot start the channel from its genesis block; "+
					"start it once the other consenters run (remove it from ledger.consenters and add it again)", ErrLedger, j+1)
			}
			r.peers = append(r.peers, raftlog.Peer{ID: uint64(j + 1), Addr: addr(m), Name: m})
		}
		return r, nil
	}
	r.id, r.join = orderer.AddedConsenterID(channel, member), true
	self.ID = r.id
	r.peers = []raftlog.Peer{self}
	return r, nil
}

// ledgerClients are gRPC clients to the other consenters over the tunnel,
// made when first needed (consenters come and go with the policy).
type ledgerClients struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)
	tls  func() *tls.Config
	port uint16
	// stats, if set, sees every call (it counts catch-up bytes).
	stats stats.Handler

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// client returns the client of member's ledger gRPC service.
func (c *ledgerClients) client(member string) (ab.AtomicBroadcastClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn, ok := c.conns[member]; ok {
		return ab.NewAtomicBroadcastClient(conn), nil
	}
	opts := append(orderer.ClientOptions(),
		grpc.WithContextDialer(c.dial),
		grpc.WithTransportCredentials(credentials.NewTLS(c.tls())))
	if c.stats != nil {
		opts = append(opts, grpc.WithStatsHandler(c.stats))
	}
	conn, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(member, strconv.Itoa(int(c.port))), opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: gRPC client for consenter %s: %w", ErrLedger, member, err)
	}
	if c.conns == nil {
		c.conns = map[string]*grpc.ClientConn{}
	}
	c.conns[member] = conn
	return ab.NewAtomicBroadcastClient(conn), nil
}

// close closes every client.
func (c *ledgerClients) close() {
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for _, conn := range conns {
		conn.Close()
	}
}

// memberOf returns the member id of a raft ID of channel ("" if unknown).
func (l *ledgerRun) memberOf(channel string, id uint64) string {
	if id == 0 {
		return ""
	}
	if n := l.reg.Lookup(channel); n != nil {
		for _, p := range n.Raft().Members() {
			if p.ID == id {
				if p.Name != "" {
					return p.Name
				}
				m, _, _ := splitMemberPort(p.Addr)
				return m
			}
		}
	}
	if c := l.chans[channel]; c != nil {
		return c.ids[id]
	}
	return ""
}

// membership is the orderer's live consenter configuration.
func (l *ledgerRun) membership() *orderer.Membership {
	return &orderer.Membership{
		Addr: func(m string) string { return net.JoinHostPort(m, strconv.Itoa(int(l.cfg.RaftPort))) },
		Name: func(p raftlog.Peer) string { m, _, _ := splitMemberPort(p.Addr); return m },
	}
}

// policyChanged tells each channel's ordering node to apply the policy's
// consenters of the channel.
func (l *ledgerRun) policyChanged() {
	for _, name := range l.names {
		if n := l.reg.Lookup(name); n != nil {
			n.Reconcile()
		}
	}
}

// consenterStatus is the ledger's consenters for /status: member id by raft ID.
func consenterStatus(n *orderer.Node) []map[string]any {
	var out []map[string]any
	for _, p := range n.Raft().Members() {
		out = append(out, map[string]any{"raft_id": p.ID, "member": p.Name})
	}
	return out
}

// ConsenterIDs lists the consenter members of p, for messages.
func ConsenterIDs(p *policy.Policy) string {
	var ids []string
	for _, m := range p.Consenters() {
		ids = append(ids, m.ID)
	}
	return strings.Join(ids, ", ")
}

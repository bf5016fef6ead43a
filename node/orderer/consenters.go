package orderer

// Live consenter changes, the pure part: raft IDs of consenters and the plan
// of raft membership changes that turns the current voters into the
// policy's ledger.consenters. No I/O; the driver is membership.go.
//
// Raft IDs (ConsenterID). The consenters a channel started with keep IDs
// 1..N (their positions in the ledger.consenters of the policy the channel
// was created with, which is also the order of the genesis block's
// consenters, and recorded in the raft log's bootstrap entries). Any other
// consenter added to a running channel gets AddedConsenterID(channel,
// member): derived from its member id alone, so every node (the leader that
// proposes the change, and the new node that must start with that ID
// before it has any of the log) agrees on it without asking anyone, and it
// never collides with the small genesis IDs. Each conf change records ID, member id and address in
// the raft log (raftlog.Peer), and raft snapshots carry that map, so it is
// the log, not policy positions, that says who is who after a restart.

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/raftlog"
	"github.com/memberd/memberd/policy"
)

// ErrConsenters: the policy's consenter list cannot be applied to the raft
// cluster as it stands (the error says why and what to change).
var ErrConsenters = errors.New("consenter change refused")

// AddedConsenterID is the raft ID of member when it is added as a consenter
// to channel's running cluster: the top bit set, the rest from SHA-256 of
// channel and member id. A member removed and added again gets the same ID.
func AddedConsenterID(channel, member string) uint64 {
	h := sha256.Sum256([]byte("memberd/raft-id\x00" + channel + "\x00" + member))
	return binary.BigEndian.Uint64(h[:8]) | 1<<63
}

// ConsenterID is the raft ID of member in channel: its genesis ID (i+1
// where genesis[i] is member; see GenesisConsenters) for a genesis
// consenter, so that one removed and added again gets its old ID back and
// may start from the genesis block like on the first day, else
// AddedConsenterID.
func ConsenterID(genesis []string, channel, member string) uint64 {
	for i, g := range genesis {
		if g == member {
			return uint64(i + 1)
		}
	}
	return AddedConsenterID(channel, member)
}

// TrustedGenesis returns genesis (GenesisConsenters) unless a current voter
// with a genesis ID has another member id than genesis says: the genesis
// block of a channel created before ChannelConfig listed consenters in
// ledger.consenters order may not match the raft IDs; then nil, and every
// added consenter gets AddedConsenterID.
func TrustedGenesis(genesis []string, voters []raftlog.Peer) []string {
	for _, p := range voters {
		if p.ID >= 1 && p.ID <= uint64(len(genesis)) && p.Name != "" && p.Name != genesis[p.ID-1] {
			return nil
		}
	}
	return genesis
}

// MaxCatchUpLag: a voter whose log is more than this many entries behind
// the leader's counts as catching up (not yet a safe part of a quorum).
const MaxCatchUpLag = 1024

// ConsenterView is what the leader knows of the raft cluster.
type ConsenterView struct {
	Self     uint64                      // this node's raft ID (the leader)
	Members  []raftlog.Peer              // current voters: ID and Name (member id, "" if unknown)
	Progress map[uint64]raftlog.Progress // the leader's view of each voter
}

// ConsenterChange is one raft membership change.
type ConsenterChange struct {
	Remove bool
	Peer   raftlog.Peer // ID and Name; Addr too for an add
}

func (c ConsenterChange) String() string {
	if c.Remove {
		return fmt.Sprintf("remove %s (raft id %d)", c.Peer.Name, c.Peer.ID)
	}
	return fmt.Sprintf("add %s (raft id %d, %s)", c.Peer.Name, c.Peer.ID, c.Peer.Addr)
}

// ConsenterPlan is what PlanConsenters decides.
type ConsenterPlan struct {
	// Pending is every change still needed, in the order they will be made:
	// adds (in ledger.consenters order) before removes, this node last.
	Pending []ConsenterChange
	// Next is the change to propose now (Pending[0]); nil when none is
	// needed or Wait says why not yet. Raft takes one at a time: propose
	// Next, wait until it is applied, then plan again.
	Next *ConsenterChange
	// TransferTo, if non-zero: Next removes this node, the leader; hand
	// leadership to TransferTo first and let the new leader remove it.
	TransferTo uint64
	// Wait says why Next is held back.
	Wait string
	// Warnings are for the operator (fault tolerance during the change).
	Warnings []string
}

func quorum(n int) int { return n/2 + 1 }

// PlanConsenters computes the raft membership changes that make the voters
// of v the members in want (the policy's ledger.consenters, in order). id
// gives the raft ID of a member to add, addr its raft address. A change is
// offered only if it keeps a quorum of caught-up voters in the resulting
// configuration; otherwise Wait says what it waits for.
func PlanConsenters(v ConsenterView, want []string, idOf func(member string) uint64, addr func(member string) string) (ConsenterPlan, error) {
	var plan ConsenterPlan
	if len(want) == 0 {
		return plan, fmt.Errorf("%w: the policy names no consenter; a raft cluster needs at least one", ErrConsenters)
	}
	wanted := map[string]bool{}
	for _, m := range want {
		if m == "" || wanted[m] {
			return plan, fmt.Errorf("%w: consenter %q is empty or listed twice", ErrConsenters, m)
		}
		wanted[m] = true
	}
	byName := map[string]raftlog.Peer{}
	byID := map[uint64]raftlog.Peer{}
	for _, p := range v.Members {
		byID[p.ID] = p
		if p.Name != "" {
			byName[p.Name] = p
		}
	}
	for _, m := range want {
		if _, ok := byName[m]; ok {
			continue
		}
		p := raftlog.Peer{ID: idOf(m), Name: m, Addr: addr(m)}
		if o, taken := byID[p.ID]; taken {
			return plan, fmt.Errorf("%w: raft id %d of new consenter %q is already used by %q; rename the member", ErrConsenters, p.ID, m, o.Name)
		}
		plan.Pending = append(plan.Pending, ConsenterChange{Peer: p})
	}
	var removeSelf *raftlog.Peer
	for _, p := range v.Members {
		switch {
		case p.Name == "":
			plan.Wait = fmt.Sprintf("raft voter %d has no recorded member id (a log from before member ids were recorded, "+
				"and this start's consenter list does not name it): no consenter change is made; restart the appliances with "+
				"the policy the channel started with", p.ID)
		case wanted[p.Name]:
		case p.ID == v.Self:
			removeSelf = &p
		default:
			plan.Pending = append(plan.Pending, ConsenterChange{Remove: true, Peer: p})
		}
	}
	if removeSelf != nil {
		plan.Pending = append(plan.Pending, ConsenterChange{Remove: true, Peer: *removeSelf})
	}
	if len(plan.Pending) == 0 || plan.Wait != "" {
		return plan, nil
	}

	lead := v.Progress[v.Self].Match
	caughtUp := func(id uint64) bool {
		pr, ok := v.Progress[id]
		return ok && pr.Active && pr.Match+MaxCatchUpLag >= lead
	}
	healthy := 0
	for _, p := range v.Members {
		if caughtUp(p.ID) {
			healthy++
		}
	}
	next := plan.Pending[0]
	size := len(v.Members)
	if next.Remove {
		size--
		if caughtUp(next.Peer.ID) {
			healthy--
		}
	} else {
		size++
	}
	if healthy < quorum(size) {
		plan.Wait = fmt.Sprintf("%s would leave %d caught-up voters of %d, below a quorum of %d; waiting for consenters to catch up",
			next, healthy, size, quorum(size))
		return plan, nil
	}
	if healthy < quorum(size)+1 {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("after %s, %d of %d voters are caught up: no consenter may fail until the others catch up",
			next, healthy, size))
	}
	if next.Remove && size < 3 {
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("%s leaves %d consenters: a cluster of %d tolerates no failed consenter", next, size, size))
	}
	if next.Remove && next.Peer.ID == v.Self {
		var best uint64
		var bestMatch uint64
		for _, p := range v.Members {
			if p.ID != v.Self && wanted[p.Name] && caughtUp(p.ID) && (best == 0 || v.Progress[p.ID].Match > bestMatch) {
				best, bestMatch = p.ID, v.Progress[p.ID].Match
			}
		}
		if best == 0 {
			plan.Wait = fmt.Sprintf("%s: no caught-up consenter to hand leadership to", next)
			return plan, nil
		}
		plan.TransferTo = best
	}
	plan.Next = &plan.Pending[0]
	return plan, nil
}

// GenesisConsenters returns the member ids of the channel's genesis
// consenters in raft ID order (ID i+1 is element i): the etcdraft
// consenters of the genesis block, each identified by the member CA of its
// TLS certificate in p ("" for one p does not know). ChannelConfig lists
// them in the order of ledger.consenters of the policy the channel was
// created with, which is how the raft IDs 1..N were given.
func GenesisConsenters(p *policy.Policy, genesis *common.Block) ([]string, error) {
	ch, err := channelconfig.Parse(genesis)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ch.Config.Consenters))
	for i, cs := range ch.Config.Consenters {
		for _, raw := range [][]byte{cs.ClientTLSCert, cs.ServerTLSCert} {
			certs := pemCerts(string(raw))
			if len(certs) == 0 {
				continue
			}
			b, _ := pem.Decode(certs[0])
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				continue
			}
			if m, err := p.MemberForCertificateAt([][]*x509.Certificate{{c}}, c.NotBefore.Add(time.Second)); err == nil {
				out[i] = m.ID
				break
			}
		}
	}
	return out, nil
}

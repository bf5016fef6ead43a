package orderer

// Live consenter changes, the driver: on the raft leader, a loop compares
// the raft voters with the policy's ledger.consenters and proposes the
// changes PlanConsenters computes, one at a time (raft takes one pending
// conf change), planning again after each is applied. It is level-driven:
// a leader change, a failed proposal or a policy that changes again midway
// only means the next check (Reconcile, or every Membership.Interval) plans
// from what the log says now. Followers do nothing here; they apply the
// conf changes from the log like any node.
//
// Policy skew: each member's admins copy a new policy version into their
// own policy folder at their own time, so a leader's policy may be older
// than the one the membership already follows. Each conf change records
// the policy version it was derived from (raftlog.MembershipChange), and
// the log keeps the highest applied (raftlog MembershipVersion): a leader
// whose policy is older (policyFloor, which also counts the config blocks
// it stored) holds every change until its folder has that version or
// later, and a change from an older version that reaches the log anyway is
// refused on every node. Membership never goes back to an older policy
// version because a leader lags; nor does the channel config (configtx.go
// refuses a config entry older than the membership).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/memberd/memberd/node/raftlog"
)

// Membership turns on live consenter changes (Config.Membership).
type Membership struct {
	// Addr returns the raft address (for raftlog's Dialer) of a member.
	// Required.
	Addr func(member string) string
	// ID returns the raft ID for a member added to the running cluster.
	// nil: ConsenterID: its genesis ID if it was a genesis consenter (read
	// from the genesis block), else AddedConsenterID(channel, member).
	ID func(member string) uint64
	// Name, if set, names a voter that the log recorded without a member id
	// (logs of older versions), e.g. from its address; without a name such
	// a voter holds every change back.
	Name func(p raftlog.Peer) string
	// Consenters returns the member ids that should be raft voters. nil: the
	// current policy's ledger.consenters. The changes it leads to are
	// recorded as derived from the current policy's version either way.
	Consenters func() []string
	// Interval between checks (besides Reconcile). Default 1s.
	Interval time.Duration
	// ChangeTimeout bounds one conf change or leadership transfer. Default 10s.
	ChangeTimeout time.Duration
}

// ErrRemoved: this node's raft ID was removed from the cluster (the policy
// no longer lists its member as a consenter). It answers like an
// unavailable service; its blocks stay readable.
var ErrRemoved = fmt.Errorf("%w: removed from ledger.consenters: this node was removed from the channel's consenters (the policy's ledger.consenters no longer lists it); "+
	"it no longer orders: re-add the member to ledger.consenters to take part again, or remove the ledger section", ErrUnavailable)

// membershipErr says why this node takes no part in ordering: removed, or
// not yet added (joining); nil otherwise.
func (n *Node) membershipErr() error {
	switch {
	case n.raft.Removed(), n.droppedByPolicy():
		return ErrRemoved
	case n.raft.Joining():
		return fmt.Errorf("%w: joining the channel's consenters: waiting for the raft leader to add this node "+
			"(the policy's ledger.consenters must list its member) and send it the log", ErrUnavailable)
	}
	return nil
}

// droppedByPolicy: with Config.Membership, the consenters it is given no
// longer list this node's member and this node does not lead. Raft may
// never tell such a node that it was removed: the leader stops sending to a
// node once it applies its removal, possibly before the node learnt that
// the removal committed (seen under -race: the old leader, having handed
// over leadership, stayed a pre-candidate with the removal entry
// uncommitted). The policy says it all the same, so it stops taking
// submissions; a leader keeps leading until it has handed over.
func (n *Node) droppedByPolicy() bool {
	if n.cfg.Membership == nil || n.raft.Leader() == n.raft.ID() {
		return false
	}
	name := n.selfName()
	if name == "" {
		return false // a log without member ids: raft decides
	}
	want, ver := n.wanted(*n.cfg.Membership)
	if ver < n.policyFloor() {
		return false // this node's policy is older than the log's: raft decides
	}
	return !slices.Contains(want, name)
}

// retire keeps raft's Retire in step with membershipErr: a node that the
// policy dropped (or raft removed) stops campaigning and hammering its
// peers, and says so once.
func (n *Node) retire() {
	removed := errors.Is(n.membershipErr(), ErrRemoved)
	if !n.raft.Retire(removed) {
		return
	}
	if removed {
		n.log.Warn("this node was removed from ledger.consenters: it no longer orders or campaigns; its blocks stay readable; "+
			"re-add its member to ledger.consenters to take part again", "raft_id", n.raft.ID())
	} else {
		n.log.Info("this node is among ledger.consenters again", "raft_id", n.raft.ID())
	}
}

// wanted returns the member ids that should be raft voters
// (Membership.Consenters, by default the current policy's
// ledger.consenters) and the version of the policy they come from.
func (n *Node) wanted(m Membership) ([]string, uint64) {
	p := n.cfg.Policy()
	var ver uint64
	if p != nil {
		ver = p.Version()
	}
	if m.Consenters != nil {
		return m.Consenters(), ver
	}
	if p == nil {
		return nil, 0
	}
	return p.Ledger().Consenters, ver
}

// selfName returns the member id the raft log records for this node's ID
// ("" while unknown). A raft ID's member never changes, so it is looked up
// once (droppedByPolicy runs on every submission of a follower).
func (n *Node) selfName() string {
	if p := n.self.Load(); p != nil {
		return *p
	}
	self := n.raft.ID()
	for _, p := range n.raft.Members() {
		if p.ID == self && p.Name != "" {
			name := p.Name
			n.self.Store(&name)
			return name
		}
	}
	return ""
}

// Reconcile asks the node to follow a policy change now: the membership
// driver checks the consenters (with Config.Membership), and the raft
// leader checks whether the channel config is due a CONFIG block
// (configtx.go). It does not block. Calling it on every applied policy
// version also lets the node remember each version, to check config
// blocks derived from one it has since replaced.
func (n *Node) Reconcile() {
	n.observePolicy()
	n.pokeConfig()
	select {
	case n.reconcileCh() <- struct{}{}:
	default:
	}
}

func (n *Node) reconcileCh() chan struct{} {
	n.reconcileOnce.Do(func() { n.reconcileC = make(chan struct{}, 1) })
	return n.reconcileC
}

// reconcile runs the driver until ctx ends.
func (n *Node) reconcile(ctx context.Context) {
	m := *n.cfg.Membership
	if m.Interval <= 0 {
		m.Interval = time.Second
	}
	if m.ChangeTimeout <= 0 {
		m.ChangeTimeout = 10 * time.Second
	}
	var genesis []string // for the default ID
	if m.ID == nil {
		if b, err := n.store.Get(0); err == nil {
			genesis, _ = GenesisConsenters(n.cfg.Policy(), b)
		}
	}
	tick := time.NewTicker(m.Interval)
	defer tick.Stop()
	var said string // the last plan logged, so that a waiting plan is logged once
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.reconcileCh():
		}
		n.retire()
		again, msg := n.reconcileStep(ctx, m, genesis)
		if msg != "" && msg != said {
			n.log.Info(msg)
		}
		said = msg
		if again {
			n.Reconcile()
		}
	}
}

// reconcileStep makes at most one change; again reports that another may
// follow at once, msg is a status line for the log ("" = nothing to say).
func (n *Node) reconcileStep(ctx context.Context, m Membership, genesis []string) (again bool, msg string) {
	if n.raft.Removed() || !n.IsLeader() {
		return false, ""
	}
	prog := n.raft.Progress()
	if prog == nil {
		return false, ""
	}
	want, ver := n.wanted(m)
	if floor := n.policyFloor(); ver < floor {
		return false, fmt.Sprintf("consenter changes wait: this node leads with policy version %d, older than version %d, "+
			"which the raft log already applied; it makes no change until its policy folder has version %d or later "+
			"(or another consenter leads)", ver, floor, floor)
	}
	members := n.raft.Members()
	for i, p := range members {
		if p.Name == "" && m.Name != nil {
			members[i].Name = m.Name(p)
		}
	}
	if m.ID == nil {
		g := TrustedGenesis(genesis, members)
		m.ID = func(member string) uint64 { return ConsenterID(g, n.channel, member) }
	}
	plan, err := PlanConsenters(ConsenterView{Self: n.raft.ID(), Members: members, Progress: prog}, want, m.ID, m.Addr)
	if err != nil {
		return false, fmt.Sprintf("consenters of the policy not applied: %v", err)
	}
	if len(plan.Pending) == 0 {
		return false, strings.Join(plan.Warnings, "; ")
	}
	for _, w := range plan.Warnings {
		n.log.Warn("consenter change: "+w, "consenters", want)
	}
	if plan.Next == nil {
		return false, "consenter change waits: " + plan.Wait
	}
	cctx, cancel := context.WithTimeout(ctx, m.ChangeTimeout)
	defer cancel()
	c := *plan.Next
	if plan.TransferTo != 0 {
		n.log.Info("consenter change: handing leadership over before this node is removed", "change", c.String(), "to", plan.TransferTo)
		if err := n.raft.TransferLeadership(cctx, plan.TransferTo); err != nil {
			return false, fmt.Sprintf("consenter change: leadership transfer to %d failed, retrying: %v", plan.TransferTo, err)
		}
		return false, ""
	}
	n.log.Info("consenter change proposed", "change", c.String(), "pending", len(plan.Pending), "consenters", want, "policy_version", ver)
	err = n.raft.ChangeMembership(cctx, raftlog.MembershipChange{Remove: c.Remove, Peer: c.Peer, Version: ver})
	if err != nil {
		return false, fmt.Sprintf("consenter change %s not applied, retrying: %v", c, err)
	}
	n.log.Info("consenter change applied", "change", c.String(), "voters", n.raft.Status().Voters)
	return true, ""
}

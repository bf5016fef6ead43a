package raftlog

// Membership: raft conf changes carry the peer they add (its raft ID, member
// name and address) in their context, so the log alone says who is who.
// Every node applies them in log order and keeps the same map, ID -> Peer;
// snapshots carry the map (snapData) so that it survives log compaction and
// reaches a node that joins through a snapshot. Config.Peers only fills in
// what the log does not know (logs written before names were recorded).
//
// Conf change context, versions:
//
//	v0  proposer(8) seq(8) addr                     (bootstrap: proposer 0)
//	v1  proposer(8) seq(8) 0x00 nameLen(2) name addr
//	v2  proposer(8) seq(8) 0x01 version(8) nameLen(2) name addr
//
// An address never starts with a control byte, so v0 contexts stay
// readable. v2 records the application's version of the membership the
// change was derived from (for the ledger: the policy version whose
// ledger.consenters it follows); v0 and v1 are version 0 (unversioned).
//
// Membership version: every node keeps the highest version recorded by an
// applied conf change (MembershipVersion), in log order, and snapshots
// carry it. A versioned conf change whose version is below it is refused
// on every node alike (applied as an empty change, as etcd's server does
// with an invalid one): a leader whose application lags (its policy folder
// has an older version than the one that last changed the membership)
// can never take the membership back. Unversioned changes (version 0) are
// applied as before.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// maxNameLen bounds Peer.Name (a member id).
const maxNameLen = 255

func confContext(proposer, seq uint64, p Peer, version uint64) []byte {
	b := make([]byte, 16, 27+len(p.Name)+len(p.Addr))
	binary.BigEndian.PutUint64(b[0:8], proposer)
	binary.BigEndian.PutUint64(b[8:16], seq)
	switch {
	case version != 0:
		b = append(b, 1)
		b = binary.BigEndian.AppendUint64(b, version)
	case p.Name == "":
		return append(b, p.Addr...)
	default:
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.Name)))
	b = append(b, p.Name...)
	return append(b, p.Addr...)
}

// confCtx is a parsed conf change context.
type confCtx struct {
	proposer, seq uint64
	peer          Peer
	version       uint64 // 0: unversioned (v0, v1)
}

func parseConfContext(b []byte) (confCtx, bool) {
	if len(b) < 16 {
		return confCtx{}, false
	}
	c := confCtx{proposer: binary.BigEndian.Uint64(b[0:8]), seq: binary.BigEndian.Uint64(b[8:16])}
	rest := b[16:]
	switch {
	case len(rest) == 0 || rest[0] > 1:
		c.peer.Addr = string(rest)
		return c, true
	case rest[0] == 1:
		if len(rest) < 9 {
			return confCtx{}, false
		}
		c.version = binary.BigEndian.Uint64(rest[1:9])
		rest = rest[8:] // rest[0] stands where v1's marker does
	}
	if len(rest) < 3 {
		return confCtx{}, false
	}
	nl := int(binary.BigEndian.Uint16(rest[1:3]))
	if len(rest) < 3+nl {
		return confCtx{}, false
	}
	c.peer = Peer{Name: string(rest[3 : 3+nl]), Addr: string(rest[3+nl:])}
	return c, true
}

// Snapshot data: the application's bytes prefixed with the membership map
// and, once a versioned conf change was applied, the membership version.
//
//	magic(4)=0xff 'r' 'l' 'm' count(2) { id(8) nameLen(2) name addrLen(2) addr } app data
//	magic(4)=0xff 'r' 'l' 'v' version(8) count(2) { ... as above } app data
//
// Snapshots written before the map existed hold only application data; the
// magic's 0xff first byte never begins the ledger's (a big-endian height).
// Version 0 is written with the first magic, so a cluster that never
// versions its changes writes what older nodes read.
var (
	snapMagic        = [4]byte{0xff, 'r', 'l', 'm'}
	snapMagicVersion = [4]byte{0xff, 'r', 'l', 'v'}
)

// snapMembership is the membership part of snapshot data.
type snapMembership struct {
	members []Peer // nil: an old snapshot without a map
	version uint64 // MembershipVersion
}

func encodeSnapData(m snapMembership, app []byte) []byte {
	var b []byte
	if m.version == 0 {
		b = append(b, snapMagic[:]...)
	} else {
		b = append(b, snapMagicVersion[:]...)
		b = binary.BigEndian.AppendUint64(b, m.version)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.members)))
	for _, p := range m.members {
		b = binary.BigEndian.AppendUint64(b, p.ID)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p.Name)))
		b = append(b, p.Name...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p.Addr)))
		b = append(b, p.Addr...)
	}
	return append(b, app...)
}

// decodeSnapData splits snapshot data into the membership (members nil
// for an old snapshot) and the application's data.
func decodeSnapData(b []byte) (m snapMembership, app []byte, err error) {
	if len(b) < 6 {
		return m, b, nil
	}
	switch [4]byte(b[:4]) {
	case snapMagic:
		b = b[4:]
	case snapMagicVersion:
		if len(b) < 14 {
			return snapMembership{}, nil, errors.New("snapshot membership truncated")
		}
		m.version = binary.BigEndian.Uint64(b[4:12])
		b = b[12:]
	default:
		return m, b, nil
	}
	count := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	str := func() (string, bool) {
		if len(b) < 2 {
			return "", false
		}
		l := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+l {
			return "", false
		}
		s := string(b[2 : 2+l])
		b = b[2+l:]
		return s, true
	}
	m.members = make([]Peer, 0, min(count, 1024))
	for range count {
		if len(b) < 8 {
			return snapMembership{}, nil, errors.New("snapshot membership truncated")
		}
		p := Peer{ID: binary.BigEndian.Uint64(b)}
		b = b[8:]
		var ok1, ok2 bool
		p.Name, ok1 = str()
		p.Addr, ok2 = str()
		if !ok1 || !ok2 {
			return snapMembership{}, nil, errors.New("snapshot membership truncated")
		}
		m.members = append(m.members, p)
	}
	return m, b, nil
}

// snapMembers returns the map entries of cs's voters and learners, by ID.
// Caller holds n.mu.
func (n *Node) snapMembers(cs raftpb.ConfState) []Peer {
	var out []Peer
	for _, id := range slices.Concat(cs.Voters, cs.Learners) {
		p := n.members[id]
		p.ID = id
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return cmpID(a.ID, b.ID) })
	return out
}

func cmpID(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// learn merges p into the membership map: the log's name and address win;
// a missing address is kept, a missing name too unless the log gives
// another address (a Config.Peers fallback that does not match the log
// must not name a voter). Caller holds n.mu.
func (n *Node) learn(p Peer) Peer {
	old := n.members[p.ID]
	if p.Name == "" && (p.Addr == "" || p.Addr == old.Addr) {
		p.Name = old.Name
	}
	if p.Addr == "" {
		p.Addr = old.Addr
	}
	n.members[p.ID] = p
	return p
}

// installSnapMembers takes the membership of a snapshot received or loaded
// (before any message that depends on it is sent) and starts sending to its
// peers.
func (n *Node) installSnapMembers(s raftpb.Snapshot) error {
	m, _, err := decodeSnapData(s.Data)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrCorrupt, s.Metadata.Index, err)
	}
	n.mu.Lock()
	var add []Peer
	for _, p := range m.members {
		add = append(add, n.learn(p))
	}
	n.confState = s.Metadata.ConfState
	n.memberVersion = max(n.memberVersion, m.version)
	n.setRemoved()
	n.mu.Unlock()
	for _, p := range add {
		if p.Addr != "" {
			n.tr.addPeer(p)
		}
	}
	return nil
}

// setRemoved records whether this node has a place in the configuration.
// A node that has no configuration yet (joining) is not removed. Caller
// holds n.mu.
func (n *Node) setRemoved() {
	cs := n.confState
	in := slices.Contains(cs.Voters, n.cfg.ID) || slices.Contains(cs.Learners, n.cfg.ID)
	n.removed.Store(len(cs.Voters) > 0 && !in)
}

func (n *Node) applyConfChange(e *raftpb.Entry) error {
	if e.Type == raftpb.EntryConfChangeV2 {
		var cc raftpb.ConfChangeV2
		if err := cc.Unmarshal(e.Data); err != nil {
			return fmt.Errorf("%w: entry %d: conf change: %v", ErrCorrupt, e.Index, err)
		}
		cs := n.core.ApplyConfChange(cc)
		n.mu.Lock()
		n.confState = *cs
		n.setRemoved()
		n.mu.Unlock()
		return nil
	}
	var cc raftpb.ConfChange
	if err := cc.Unmarshal(e.Data); err != nil {
		return fmt.Errorf("%w: entry %d: conf change: %v", ErrCorrupt, e.Index, err)
	}
	c, ok := parseConfContext(cc.Context)
	if ok && c.version != 0 {
		n.mu.Lock()
		floor := n.memberVersion
		if c.version >= floor {
			n.memberVersion = c.version
		}
		n.mu.Unlock()
		if c.version < floor {
			return n.refuseConfChange(e, cc, c, floor)
		}
	}
	cs := n.core.ApplyConfChange(cc)
	p := c.peer
	p.ID = cc.NodeID
	n.mu.Lock()
	n.confState = *cs
	switch cc.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		p = n.learn(p)
	case raftpb.ConfChangeRemoveNode:
		p = n.members[cc.NodeID]
		if cc.NodeID != n.cfg.ID {
			delete(n.members, cc.NodeID)
		}
	}
	wasRemoved := n.removed.Load()
	n.setRemoved()
	removed := n.removed.Load()
	n.mu.Unlock()
	switch cc.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		if p.Addr != "" {
			n.tr.addPeer(p)
		}
		// A new node that needs a snapshot rejects one whose ConfState does
		// not name it; make a fresh snapshot that does.
		n.forceSnap = true
	case raftpb.ConfChangeRemoveNode:
		n.tr.removePeer(cc.NodeID)
	}
	// Only the removal of this node removes it: a node that joins replays
	// the log from before it was added, where the configuration does not
	// name it yet, and that is no removal to warn about.
	if removed && !wasRemoved && cc.Type == raftpb.ConfChangeRemoveNode && cc.NodeID == n.cfg.ID {
		n.cfg.Logger.Warn("this node was removed from the raft cluster: it no longer orders; its data stays for reading",
			"node", n.cfg.ID, "index", e.Index)
	}
	n.cfg.Logger.Info("raft membership changed", "node", n.cfg.ID, "index", e.Index,
		"change", cc.Type.String(), "changed_node", cc.NodeID, "name", p.Name, "voters", cs.Voters, "membership_version", c.version)
	if ok && c.proposer == n.cfg.ID {
		n.wakeConfChange(c.seq, nil)
	}
	return nil
}

// refuseConfChange applies committed conf change cc as an empty change
// (raft then leaves the configuration as it is and takes new conf changes
// again): its version is below floor, the membership version already
// applied. Every node decides the same, since the floor follows the log.
func (n *Node) refuseConfChange(e *raftpb.Entry, cc raftpb.ConfChange, c confCtx, floor uint64) error {
	n.core.ApplyConfChange(raftpb.ConfChange{NodeID: raft.None})
	err := fmt.Errorf("%w: %s of node %d was derived from membership version %d, older than version %d, which the log already applied",
		ErrStaleMembership, cc.Type, cc.NodeID, c.version, floor)
	n.cfg.Logger.Warn("raft membership change refused: it would take the membership back to an older version", "node", n.cfg.ID,
		"index", e.Index, "change", cc.Type.String(), "changed_node", cc.NodeID, "version", c.version, "membership_version", floor)
	if c.proposer == n.cfg.ID {
		n.wakeConfChange(c.seq, err)
	}
	return nil
}

// wakeConfChange answers the confChange call waiting for seq, if any.
func (n *Node) wakeConfChange(seq uint64, err error) {
	n.wmu.Lock()
	defer n.wmu.Unlock()
	if w := n.waits[seq]; w != nil {
		w.err = err
		w.ch <- 0
		delete(n.waits, seq)
	}
}

// MembershipVersion returns the highest version recorded by a conf change
// applied on this node (0: none was versioned): the application's version
// of the membership the log has reached. ChangeMembership refuses, and
// every node refuses to apply, a change derived from an older version.
func (n *Node) MembershipVersion() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.memberVersion
}

// MembershipChange is one raft membership change.
type MembershipChange struct {
	// Remove: remove Peer.ID; otherwise add Peer as a voter.
	Remove bool
	// Peer is the node to add (ID, Addr and, e.g. the member id, Name, all
	// recorded in the log) or to remove (ID).
	Peer Peer
	// Version is the application's version of the membership the change
	// was derived from (for the ledger: the policy version); 0 is
	// unversioned. A change below MembershipVersion is refused.
	Version uint64
}

// ChangeMembership proposes c and returns once it is applied on this node.
// A node added starts with Config.Join and an empty Dir; it catches up from
// the leader (through a snapshot if the log was compacted). Raft allows
// one pending membership change at a time: a change proposed while another
// is pending is dropped, and ChangeMembership then returns ctx's error;
// retry. A versioned change older than MembershipVersion fails with
// ErrStaleMembership, here or, if a newer one committed before it, when
// it is applied (then it changes nothing on any node).
func (n *Node) ChangeMembership(ctx context.Context, c MembershipChange) error {
	p := c.Peer
	if c.Remove {
		return n.confChange(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: p.ID}, Peer{}, c.Version)
	}
	if p.ID == 0 || p.Addr == "" || len(p.Name) > maxNameLen || len(p.Addr) > maxAddrLen || p.Addr[0] < 0x20 {
		return fmt.Errorf("%w: adding a peer needs an ID and an Addr that does not start with a control byte (and a Name of at most %d bytes)", ErrInvalidConfig, maxNameLen)
	}
	return n.confChange(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: p.ID}, p, c.Version)
}

// AddPeer is ChangeMembership of an unversioned add of p.
func (n *Node) AddPeer(ctx context.Context, p Peer) error {
	return n.ChangeMembership(ctx, MembershipChange{Peer: p})
}

// RemovePeer is ChangeMembership of an unversioned removal of id. A leader
// that removes itself steps down once the change is applied (and the
// remaining members elect a new one); TransferLeadership first avoids the
// pause.
func (n *Node) RemovePeer(ctx context.Context, id uint64) error {
	return n.ChangeMembership(ctx, MembershipChange{Remove: true, Peer: Peer{ID: id}})
}

func (n *Node) confChange(ctx context.Context, cc raftpb.ConfChange, p Peer, version uint64) error {
	if err := n.waitStarted(ctx); err != nil {
		return err
	}
	if floor := n.MembershipVersion(); version != 0 && version < floor {
		return fmt.Errorf("%w: %s of node %d is derived from membership version %d, older than version %d, which the log already applied",
			ErrStaleMembership, cc.Type, cc.NodeID, version, floor)
	}
	seq := n.seq.Add(1)
	cc.Context = confContext(n.cfg.ID, seq, p, version)
	w := &waiter{ch: make(chan uint64, 1)}
	n.wmu.Lock()
	n.waits[seq] = w
	n.wmu.Unlock()
	defer func() {
		n.wmu.Lock()
		delete(n.waits, seq)
		n.wmu.Unlock()
	}()
	if err := n.rn.ProposeConfChange(ctx, cc); err != nil {
		return mapRaftErr(err)
	}
	select {
	case <-w.ch:
		return w.err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrClosed
	}
}

// TransferLeadership asks raft to hand leadership from this node (which
// must lead) to voter to, and waits until this node no longer leads.
func (n *Node) TransferLeadership(ctx context.Context, to uint64) error {
	if err := n.waitStarted(ctx); err != nil {
		return err
	}
	if n.lead.Load() != n.cfg.ID {
		return fmt.Errorf("%w: node %d is not the leader", ErrDropped, n.cfg.ID)
	}
	n.rn.TransferLeadership(ctx, n.cfg.ID, to)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for n.lead.Load() == n.cfg.ID {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.done:
			return ErrClosed
		case <-t.C:
		}
	}
	return nil
}

// Progress is the leader's view of one voter's replication.
type Progress struct {
	Match  uint64 // highest log index known to be on the voter
	Active bool   // heard from within the last election timeout
}

// Progress returns the leader's view of each voter (this node included),
// nil when this node does not lead.
func (n *Node) Progress() map[uint64]Progress {
	if !n.isStarted() || n.lead.Load() != n.cfg.ID {
		return nil
	}
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		return nil
	}
	out := make(map[uint64]Progress, len(st.Progress))
	for id, pr := range st.Progress {
		if pr.IsLearner {
			continue
		}
		out[id] = Progress{Match: pr.Match, Active: pr.RecentActive || id == n.cfg.ID}
	}
	return out
}

// Joining reports whether this node has no configuration yet (started with
// Config.Join, it waits for the leader to add it and send the log or a
// snapshot). Its transport then accepts connections from nodes it does not
// know, since it learns their addresses only from the leader.
func (n *Node) Joining() bool {
	if n.bootstrap.Load() {
		return false // it gets its configuration from Config.Peers at once
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.confState.Voters) == 0
}

// acceptsUnknown says whether the transport may take a connection (and an
// addr frame) from a node of the cluster that this node's membership does
// not list: while it joins, and while it knows no leader. A consenter
// restarted on an empty disk starts from the genesis peers; consenters
// added since (the leader among them) are unknown to it until the leader's
// snapshot or entries say so, and it hears those only if it lets the
// leader in. A node that follows a leader refuses strangers.
func (n *Node) acceptsUnknown() bool { return n.Joining() || n.Leader() == 0 }

// selfAddr is this node's own address as the membership records it.
func (n *Node) selfAddr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.members[n.cfg.ID].Addr
}

// Removed reports whether this node's ID has been removed from the raft
// configuration: it no longer takes part in consensus.
func (n *Node) Removed() bool { return n.removed.Load() }

// Retire(true) tells the node that the application no longer counts it
// among the consenters (e.g. the policy dropped its member) although raft
// may never say so: the leader stops sending to a node as soon as it
// applies its removal, possibly before that node learnt the removal
// committed, and such a node would then run a pre-vote election every
// election timeout for ever. While retired and knowing no leader, the
// node stops its election timer: it does not campaign, still answers
// other nodes' votes (knowing no leader, it grants them as raft allows),
// follows a leader that contacts it, and its transport redials an
// unreachable peer at most every idleBackoff. A retired node that follows
// a leader ticks as usual, so it campaigns at most once after losing it.
// Retire(false) undoes it. It reports whether the state changed.
func (n *Node) Retire(on bool) bool {
	if n.retired.Swap(on) == on {
		return false
	}
	if on {
		n.cfg.Logger.Info("raft node retired: it no longer campaigns and redials its peers only every "+idleBackoff.String(),
			"node", n.cfg.ID, "leader", n.lead.Load())
	} else {
		n.cfg.Logger.Info("raft node no longer retired: it campaigns again when it loses its leader", "node", n.cfg.ID)
	}
	return true
}

// idle: the transport need not keep dialing peers eagerly (retired or
// removed).
func (n *Node) idle() bool { return n.retired.Load() || n.removed.Load() }

// Members returns the current voters with the name and address the log
// recorded for each (empty when unknown), in ID order.
func (n *Node) Members() []Peer {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.snapMembers(raftpb.ConfState{Voters: n.confState.Voters})
}

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
//
// An address never starts with a zero byte, so v0 contexts stay readable.

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

func confContext(proposer, seq uint64, p Peer) []byte {
	b := make([]byte, 16, 19+len(p.Name)+len(p.Addr))
	binary.BigEndian.PutUint64(b[0:8], proposer)
	binary.BigEndian.PutUint64(b[8:16], seq)
	if p.Name == "" {
		return append(b, p.Addr...)
	}
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.Name)))
	b = append(b, p.Name...)
	return append(b, p.Addr...)
}

func parseConfContext(b []byte) (proposer, seq uint64, p Peer, ok bool) {
	if len(b) < 16 {
		return 0, 0, Peer{}, false
	}
	proposer, seq = binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint64(b[8:16])
	rest := b[16:]
	if len(rest) == 0 || rest[0] != 0 {
		return proposer, seq, Peer{Addr: string(rest)}, true
	}
	if len(rest) < 3 {
		return 0, 0, Peer{}, false
	}
	nl := int(binary.BigEndian.Uint16(rest[1:3]))
	if len(rest) < 3+nl {
		return 0, 0, Peer{}, false
	}
	return proposer, seq, Peer{Name: string(rest[3 : 3+nl]), Addr: string(rest[3+nl:])}, true
}

// Snapshot data: the application's bytes prefixed with the membership map.
//
//	magic(4)=0xff 'r' 'l' 'm' count(2) { id(8) nameLen(2) name addrLen(2) addr } app data
//
// Snapshots written before the map existed hold only application data; the
// magic's 0xff first byte never begins the ledger's (a big-endian height).
var snapMagic = [4]byte{0xff, 'r', 'l', 'm'}

func encodeSnapData(members []Peer, app []byte) []byte {
	b := append([]byte(nil), snapMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(members)))
	for _, p := range members {
		b = binary.BigEndian.AppendUint64(b, p.ID)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p.Name)))
		b = append(b, p.Name...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p.Addr)))
		b = append(b, p.Addr...)
	}
	return append(b, app...)
}

// decodeSnapData splits snapshot data into the membership map (nil for an
// old snapshot) and the application's data.
func decodeSnapData(b []byte) (members []Peer, app []byte, err error) {
	if len(b) < 6 || [4]byte(b[:4]) != snapMagic {
		return nil, b, nil
	}
	count := int(binary.BigEndian.Uint16(b[4:6]))
	b = b[6:]
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
	members = make([]Peer, 0, min(count, 1024))
	for range count {
		if len(b) < 8 {
			return nil, nil, errors.New("snapshot membership truncated")
		}
		p := Peer{ID: binary.BigEndian.Uint64(b)}
		b = b[8:]
		var ok1, ok2 bool
		p.Name, ok1 = str()
		p.Addr, ok2 = str()
		if !ok1 || !ok2 {
			return nil, nil, errors.New("snapshot membership truncated")
		}
		members = append(members, p)
	}
	return members, b, nil
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
	members, _, err := decodeSnapData(s.Data)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrCorrupt, s.Metadata.Index, err)
	}
	n.mu.Lock()
	var add []Peer
	for _, p := range members {
		add = append(add, n.learn(p))
	}
	n.confState = s.Metadata.ConfState
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
		cs := n.rn.ApplyConfChange(cc)
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
	cs := n.rn.ApplyConfChange(cc)
	proposer, seq, p, ok := parseConfContext(cc.Context)
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
	if removed && !wasRemoved {
		n.cfg.Logger.Warn("this node was removed from the raft cluster: it no longer orders; its data stays for reading",
			"node", n.cfg.ID, "index", e.Index)
	}
	n.cfg.Logger.Info("raft membership changed", "node", n.cfg.ID, "index", e.Index,
		"change", cc.Type.String(), "changed_node", cc.NodeID, "name", p.Name, "voters", cs.Voters)
	if ok && proposer == n.cfg.ID {
		n.wmu.Lock()
		if w := n.waits[seq]; w != nil {
			w.ch <- e.Index
			delete(n.waits, seq)
		}
		n.wmu.Unlock()
	}
	return nil
}

// AddPeer proposes adding p as a voting consenter and returns once the change
// is applied on this node. p.Name (e.g. the member id) and p.Addr are
// recorded in the log, so every node, and this one after a restart, knows
// them. The new node starts with Config.Join and an empty Dir; it catches up
// from the leader (through a snapshot if the log was compacted). Raft allows
// one pending membership change at a time: a change proposed while another
// is pending is dropped, and AddPeer then returns ctx's error; retry.
func (n *Node) AddPeer(ctx context.Context, p Peer) error {
	if p.ID == 0 || p.Addr == "" || len(p.Name) > maxNameLen || len(p.Addr) > maxAddrLen || p.Addr[0] == 0 {
		return fmt.Errorf("%w: AddPeer needs an ID and an Addr (and a Name of at most %d bytes)", ErrInvalidConfig, maxNameLen)
	}
	return n.confChange(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: p.ID}, p)
}

// RemovePeer proposes removing consenter id; semantics as AddPeer. A leader
// that removes itself steps down once the change is applied (and the
// remaining members elect a new one); TransferLeadership first avoids the
// pause.
func (n *Node) RemovePeer(ctx context.Context, id uint64) error {
	return n.confChange(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: id}, Peer{})
}

func (n *Node) confChange(ctx context.Context, cc raftpb.ConfChange, p Peer) error {
	if err := n.waitStarted(ctx); err != nil {
		return err
	}
	seq := n.seq.Add(1)
	cc.Context = confContext(n.cfg.ID, seq, p)
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
		return nil
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

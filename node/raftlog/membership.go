package raftlog

import (
	"context"
	"encoding/binary"
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
)

// Conf change context: proposer(8) seq(8) addr. The bootstrap entries use
// proposer 0.
func confContext(proposer, seq uint64, addr string) []byte {
	b := make([]byte, 16, 16+len(addr))
	binary.BigEndian.PutUint64(b[0:8], proposer)
	binary.BigEndian.PutUint64(b[8:16], seq)
	return append(b, addr...)
}

func parseConfContext(b []byte) (proposer, seq uint64, addr string, ok bool) {
	if len(b) < 16 {
		return 0, 0, "", false
	}
	return binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint64(b[8:16]), string(b[16:]), true
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
		n.mu.Unlock()
		return nil
	}
	var cc raftpb.ConfChange
	if err := cc.Unmarshal(e.Data); err != nil {
		return fmt.Errorf("%w: entry %d: conf change: %v", ErrCorrupt, e.Index, err)
	}
	cs := n.rn.ApplyConfChange(cc)
	proposer, seq, addr, ok := parseConfContext(cc.Context)
	n.mu.Lock()
	n.confState = *cs
	switch cc.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		if ok && addr != "" && cc.NodeID != n.cfg.ID {
			n.addrs[cc.NodeID] = addr
		}
	case raftpb.ConfChangeRemoveNode:
		delete(n.addrs, cc.NodeID)
	}
	addr, known := n.addrs[cc.NodeID]
	n.mu.Unlock()
	switch cc.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		if known {
			n.tr.addPeer(Peer{ID: cc.NodeID, Addr: addr})
		}
		// A new node that needs a snapshot rejects one whose ConfState does
		// not name it; make a fresh snapshot that does.
		n.forceSnap = true
	case raftpb.ConfChangeRemoveNode:
		n.tr.removePeer(cc.NodeID)
		if cc.NodeID == n.cfg.ID {
			n.cfg.Logger.Warn("this node was removed from the raft cluster", "node", n.cfg.ID, "index", e.Index)
		}
	}
	n.cfg.Logger.Info("raft membership changed", "node", n.cfg.ID, "index", e.Index,
		"change", cc.Type.String(), "member", cc.NodeID, "voters", cs.Voters)
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
// is applied on this node. The new node starts with Config.Join and an empty
// Dir; it catches up from the leader (through a snapshot if the log was
// compacted). Raft allows one pending membership change at a time: a change
// proposed while another is pending is dropped, and AddPeer then returns
// ctx's error; retry.
func (n *Node) AddPeer(ctx context.Context, p Peer) error {
	if p.ID == 0 || p.Addr == "" {
		return fmt.Errorf("%w: AddPeer needs an ID and an Addr", ErrInvalidConfig)
	}
	return n.confChange(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: p.ID}, p.Addr)
}

// RemovePeer proposes removing consenter id; semantics as AddPeer.
func (n *Node) RemovePeer(ctx context.Context, id uint64) error {
	return n.confChange(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: id}, "")
}

func (n *Node) confChange(ctx context.Context, cc raftpb.ConfChange, addr string) error {
	if err := n.waitStarted(ctx); err != nil {
		return err
	}
	seq := n.seq.Add(1)
	cc.Context = confContext(n.cfg.ID, seq, addr)
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

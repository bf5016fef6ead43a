package sim

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/memberd/memberd/policy"
)

// Policy versions in the simulation. Each node has its own policy folder
// and state folder, read by a real policy.Watcher; a delivery writes
// bundle files into a node's folder (the next version, a version out of
// order, or, as a rollback attempt, only an old version) and opens a new
// Watcher on the folders, as a restart does, so that the anti-rollback
// record in the state folder is what keeps the node's version. Version 3
// removes one member from ledger.consenters; the leader's Membership driver
// then removes its node from raft.

// simPolicies makes versions 2..4 after genesis; version 3 drops member
// removed from the consenters.
func (s *ledgerSim) simPolicies(removed string) {
	t := s.t
	all := []string{"m1", "m2", "m3"}
	prev := s.pols[0]
	for v := 2; v <= 4; v++ {
		p := s.cons.Next(t, prev, func(d *policy.Document) {
			d.Description = fmt.Sprintf("version %d", v)
			if v == 4 && s.tunnel {
				// The tunnel simulation also removes the member from the
				// consortium: its relay links close, nothing is forwarded
				// to it any more.
				d.Members = slices.DeleteFunc(d.Members, func(m *policy.Member) bool { return m.ID == removed })
			}
			if v == 3 {
				d.Ledger.Consenters = slices.DeleteFunc(slices.Clone(d.Ledger.Consenters), func(m string) bool { return m == removed })
				for _, m := range d.Members {
					if m.ID == removed {
						m.Roles = slices.DeleteFunc(m.Roles, func(r policy.Role) bool { return r == policy.RoleConsenter })
					}
				}
			}
		}, all...)
		s.pols = append(s.pols, p)
		prev = p
	}
}

// policyFile is version v's file name in a policy folder.
func policyFile(v uint64) string { return fmt.Sprintf("v%d.yaml", v) }

// openWatcher opens a new Watcher on n's folders and checks the version it
// applies: never below the one n had (no rollback), and only a version
// whose predecessors were all delivered to n (in order).
func (s *ledgerSim) openWatcher(n *simNode) {
	w, err := policy.NewWatcher(policy.Options{Dir: n.polDir, StateDir: n.stateDir, Genesis: s.pols[0].Hash()})
	if err != nil {
		s.t.Errorf("seed %d: %s: policy watcher: %v", s.seed, n.name, err)
		return
	}
	v := w.Current().Version()
	s.mu.Lock()
	defer s.mu.Unlock()
	if v < n.polVersion {
		s.t.Errorf("seed %d: %s: policy rolled back from version %d to %d", s.seed, n.name, n.polVersion, v)
	}
	for k := uint64(1); k < v; k++ {
		if !n.delivered[k] {
			s.t.Errorf("seed %d: %s: policy version %d applied, but version %d was never delivered to it", s.seed, n.name, v, k)
		}
	}
	n.polVersion = v
	n.watcher.Store(w)
}

// deliver writes the files of versions vs into n's policy folder; with
// only, it first removes every other bundle file (a folder rolled back).
func (s *ledgerSim) deliver(n *simNode, only bool, vs ...uint64) {
	if only {
		old, _ := filepath.Glob(filepath.Join(n.polDir, "*.yaml"))
		for _, f := range old {
			os.Remove(f)
		}
	}
	for _, v := range vs {
		if err := os.WriteFile(filepath.Join(n.polDir, policyFile(v)), s.pols[v-1].Marshal(), 0o600); err != nil {
			s.t.Fatal(err)
		}
		s.mu.Lock()
		n.delivered[v] = true
		s.mu.Unlock()
	}
	s.openWatcher(n)
	if on := n.np.Load(); on != nil {
		on.Reconcile()
	}
	if s.tn != nil {
		s.tn.policyApplied(n)
	}
}

// policyEvent delivers to one node, as the seed says: the next version it
// lacks, a random version (maybe out of order), or a rollback attempt.
// With -sim.policyskew=false the version goes to every node at once (no
// node leads with an older version than another: see flagSkew).
func (s *ledgerSim) policyEvent() {
	r := s.rng
	n := s.nodes[r.IntN(len(s.nodes))]
	if !*flagSkew {
		s.mu.Lock()
		next := n.polVersion + 1
		s.mu.Unlock()
		if next > uint64(len(s.pols)) {
			return
		}
		s.logf("policy v%d to every node", next)
		for _, n := range s.nodes {
			s.deliver(n, false, next)
		}
		return
	}
	s.mu.Lock()
	next := n.polVersion + 1
	s.mu.Unlock()
	latest := uint64(len(s.pols))
	switch k := r.IntN(10); {
	case k < 6 && next <= latest:
		s.logf("policy v%d to %s", next, n.name)
		s.deliver(n, false, next)
	case k < 8:
		v := 1 + uint64(r.IntN(int(latest)))
		s.logf("policy v%d (any order) to %s", v, n.name)
		s.deliver(n, false, v)
	default:
		v := 1 + uint64(r.IntN(int(latest)))
		s.logf("policy folder of %s rolled back to only v%d", n.name, v)
		s.deliver(n, true, v)
	}
}

// raftMsgType decodes the raft message type of a raftlog frame (type 3);
// ok false for other frames.
func raftMsgType(frame []byte) (raftpb.MessageType, bool) {
	if len(frame) < 6 || frame[0] != 1 || frame[1] != 3 || int(binary.BigEndian.Uint32(frame[2:6])) != len(frame)-6 {
		return 0, false
	}
	var m raftpb.Message
	if err := m.Unmarshal(frame[6:]); err != nil {
		return 0, false
	}
	return m.Type, true
}

// observe counts the replication a removed node still receives: appends,
// heartbeats and snapshots sent to it (written to the connection) over a
// second after every remaining node had applied its removal (s.removedAt,
// polled every 200ms).
func (s *ledgerSim) observe(from, to string, sent time.Time, frame []byte) {
	s.mu.Lock()
	at, target := s.removedAt, s.removedName
	s.mu.Unlock()
	if at.IsZero() || to != target || sent.Sub(at) < time.Second {
		return
	}
	typ, ok := raftMsgType(frame)
	if !ok {
		return
	}
	switch typ {
	case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap:
		s.mu.Lock()
		s.toRemoved[fmt.Sprintf("%s %v", from, typ)]++
		s.mu.Unlock()
	}
}

// watchRemoval sets s.removedAt once every node but the removed one has it
// out of its raft members.
func (s *ledgerSim) watchRemoval(done chan struct{}) {
	removedID := s.removedID
	for {
		select {
		case <-done:
			return
		case <-time.After(200 * time.Millisecond):
		}
		gone := true
		for _, n := range s.nodes {
			if n.id == removedID {
				continue
			}
			on := n.np.Load()
			if on == nil {
				gone = false
				break
			}
			for _, p := range on.Raft().Members() {
				if p.ID == removedID {
					gone = false
				}
			}
		}
		if gone {
			s.mu.Lock()
			if s.removedAt.IsZero() {
				s.removedAt = time.Now()
			}
			s.mu.Unlock()
			s.logf("%s removed from raft on every other node", s.removedName)
			return
		}
	}
}

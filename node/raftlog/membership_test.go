package raftlog

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/memberd/memberd/internal/testpki"
)

func TestAddAndRemovePeer(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 50; cfg.CatchUpEntries = 10 })
	lead := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.propose(ctx, "a", 4, 200, nil)

	// Node 4 joins with an empty directory and no addresses: the log was
	// compacted, so it catches up through a snapshot, which also tells it
	// who the other members are.
	if err := c.nodes[lead].node().AddPeer(ctx, Peer{ID: 4, Addr: "n4", Name: "m4"}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
	c.size = 4
	tn := &testNode{id: 4, dir: filepath.Join(t.TempDir(), "n4"), app: &testApp{}}
	tn.app.fetch = c.fetchFrom(4)
	c.nodes[4] = tn
	c.tune = func(cfg *Config) {
		cfg.SnapshotEvery = 50
		cfg.CatchUpEntries = 10
		if cfg.ID == 4 {
			cfg.Join, cfg.Peers = true, nil
		}
	}
	c.start(4)
	c.propose(ctx, "b", 4, 100, nil)
	c.waitApplied(300, 30*time.Second)
	c.checkIdentical()
	if tn.app.snaps == 0 {
		t.Errorf("new node caught up without a snapshot")
	}
	st := c.nodes[lead].node().Status()
	if !slices.Equal(sorted(st.Voters), []uint64{1, 2, 3, 4}) {
		t.Fatalf("voters after AddPeer: %v", st.Voters)
	}
	wantMembers := []Peer{{1, "n1", "m1"}, {2, "n2", "m2"}, {3, "n3", "m3"}, {4, "n4", "m4"}}
	if got := tn.node().Members(); !slices.Equal(got, wantMembers) {
		t.Fatalf("members on the joined node: %v", got)
	}

	// Membership survives a restart even though the application is past
	// the conf change (Config.Applied), and the restarted node needs no
	// addresses: the log and its snapshot have them.
	other := uint64(1)
	if other == lead {
		other = 2
	}
	c.stop(other)
	c.tune = func(cfg *Config) {
		cfg.SnapshotEvery = 50
		cfg.CatchUpEntries = 10
		cfg.Peers = []Peer{{ID: cfg.ID}}
	}
	c.start(other)
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(c.nodes[other].node().Members(), wantMembers) {
		if time.Now().After(deadline) {
			t.Fatalf("members on restarted node %d: %v", other, c.nodes[other].node().Members())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if id, cluster, err := StoredID(c.nodes[4].dir); id != 4 || cluster != "test-channel" || err != nil {
		t.Fatalf("StoredID: %d %q %v", id, cluster, err)
	}
	if id, _, err := StoredID(t.TempDir()); id != 0 || err != nil {
		t.Fatalf("StoredID of an empty dir: %d %v", id, err)
	}
	c.propose(ctx, "r", 4, 40, nil)
	c.waitApplied(340, 30*time.Second)

	// Remove it again; the remaining three keep committing.
	lead = c.leader(10 * time.Second)
	if err := c.nodes[lead].node().RemovePeer(ctx, 4); err != nil {
		t.Fatalf("RemovePeer: %v", err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !tn.node().Removed() {
		if time.Now().After(deadline) {
			t.Fatalf("node 4 does not know it was removed: %+v", tn.node().Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.stop(4)
	delete(c.nodes, 4)
	c.size = 3
	c.propose(ctx, "c", 3, 60, nil)
	c.waitApplied(400, 30*time.Second)
	c.checkIdentical()
	if v := sorted(c.nodes[lead].node().Status().Voters); !slices.Equal(v, []uint64{1, 2, 3}) {
		t.Fatalf("voters after RemovePeer: %v", v)
	}

	// The leader hands over leadership, then the new leader removes it.
	old := lead
	to := old%3 + 1
	if err := c.nodes[old].node().TransferLeadership(ctx, to); err != nil {
		t.Fatalf("TransferLeadership: %v", err)
	}
	lead = c.leader(10 * time.Second)
	if lead == old {
		t.Fatalf("node %d still leads", old)
	}
	if err := c.nodes[lead].node().RemovePeer(ctx, old); err != nil {
		t.Fatalf("RemovePeer(%d): %v", old, err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !c.nodes[old].node().Removed() {
		if time.Now().After(deadline) {
			t.Fatalf("node %d does not know it was removed", old)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.stop(old)
	delete(c.nodes, old)
	c.propose(ctx, "d", 2, 20, nil)
	c.waitApplied(420, 30*time.Second)
	c.checkIdentical()
}

func TestConfContextAndSnapData(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       Peer
		version uint64
	}{
		{"address only (v0)", Peer{Addr: "n1"}, 0},
		{"empty (remove)", Peer{}, 0},
		{"name and address", Peer{Name: "m1", Addr: "m1:7052"}, 0},
		{"name only", Peer{Name: "m1"}, 0},
		{"versioned (v2)", Peer{Name: "m1", Addr: "m1:7052"}, 7},
		{"versioned remove", Peer{}, 1 << 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := confContext(7, 9, tc.p, tc.version)
			c, ok := parseConfContext(b)
			if !ok || c.proposer != 7 || c.seq != 9 || c.peer != tc.p || c.version != tc.version {
				t.Fatalf("got %+v %v", c, ok)
			}
			if _, ok := parseConfContext(b[:15]); ok {
				t.Fatal("short context accepted")
			}
		})
	}
	if _, ok := parseConfContext(append(confContext(1, 2, Peer{}, 0), 0, 0, 5, 'a')); ok {
		t.Fatal("truncated name accepted")
	}
	if _, ok := parseConfContext(confContext(1, 2, Peer{}, 3)[:20]); ok {
		t.Fatal("truncated version accepted")
	}

	members := []Peer{{1, "n1", "m1"}, {1 << 63, "", ""}}
	for _, tc := range []struct {
		name string
		data []byte
		m    snapMembership
		app  []byte
		bad  bool
	}{
		{"with members", encodeSnapData(snapMembership{members: members}, []byte("app")), snapMembership{members: members}, []byte("app"), false},
		{"no members", encodeSnapData(snapMembership{}, []byte("app")), snapMembership{members: []Peer{}}, []byte("app"), false},
		{"versioned", encodeSnapData(snapMembership{members: members, version: 4}, []byte("app")), snapMembership{members: members, version: 4}, []byte("app"), false},
		{"old snapshot", []byte{0, 0, 0, 0, 0, 0, 0, 5, 'h'}, snapMembership{}, []byte{0, 0, 0, 0, 0, 0, 0, 5, 'h'}, false},
		{"empty", nil, snapMembership{}, nil, false},
		{"truncated", encodeSnapData(snapMembership{members: members}, nil)[:12], snapMembership{}, nil, true},
		{"truncated version", encodeSnapData(snapMembership{members: members, version: 4}, nil)[:10], snapMembership{}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, app, err := decodeSnapData(tc.data)
			if (err != nil) != tc.bad {
				t.Fatalf("err %v", err)
			}
			if !slices.Equal(m.members, tc.m.members) || m.version != tc.m.version || string(app) != string(tc.app) {
				t.Fatalf("got %+v %q", m, app)
			}
		})
	}
	if b := encodeSnapData(snapMembership{members: members}, nil); [4]byte(b[:4]) != snapMagic {
		t.Fatal("an unversioned snapshot must keep the format older nodes read")
	}
}

func sorted(v []uint64) []uint64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v
}

// TestClusterOverTLS: the optional TLS layer (for use without the tunnel).
func TestClusterOverTLS(t *testing.T) {
	id := testpki.SelfSigned(t, "consenter", testpki.DNS("consenter"))
	pool := x509.NewCertPool()
	pool.AddCert(id.Cert)
	tc := id.TLS()
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.ClientTLS = &tls.Config{Certificates: []tls.Certificate{tc}, RootCAs: pool, ServerName: "consenter", MinVersion: tls.VersionTLS13}
		cfg.ServerTLS = &tls.Config{Certificates: []tls.Certificate{tc}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	})
	c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if got := len(c.propose(ctx, "tls", 4, 100, nil)); got != 100 {
		t.Fatalf("confirmed %d of 100", got)
	}
	c.waitApplied(100, 30*time.Second)
	c.checkIdentical()
	_ = fmt.Sprint()
}

// FuzzMembershipCodecs: conf change contexts and snapshot data from the
// network never panic, and what they decode encodes back to the same.
func FuzzMembershipCodecs(f *testing.F) {
	f.Add(confContext(1, 2, Peer{Name: "m1", Addr: "m1:7052"}, 0))
	f.Add(confContext(0, 0, Peer{Addr: "n1"}, 0))
	f.Add(confContext(1, 2, Peer{Name: "m1", Addr: "m1:7052"}, 9))
	f.Add(encodeSnapData(snapMembership{members: []Peer{{1, "n1", "m1"}, {2, "", ""}}}, []byte("app")))
	f.Add(encodeSnapData(snapMembership{members: []Peer{{1, "n1", "m1"}}, version: 3}, []byte("app")))
	f.Add([]byte{0xff, 'r', 'l', 'm', 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, ok := parseConfContext(b); ok && c.peer.Addr != "" && c.peer.Addr[0] > 1 && len(c.peer.Name) <= maxNameLen {
			if d, ok := parseConfContext(confContext(c.proposer, c.seq, c.peer, c.version)); !ok || d != c {
				t.Fatalf("context %+v does not round-trip: %+v", c, d)
			}
		}
		if m, app, err := decodeSnapData(b); err == nil && m.members != nil {
			m2, app2, err := decodeSnapData(encodeSnapData(m, app))
			if err != nil || !slices.Equal(m2.members, m.members) || m2.version != m.version || string(app2) != string(app) {
				t.Fatalf("snapshot data does not round-trip: %+v %q %v", m2, app2, err)
			}
		}
	})
}

// TestMembershipVersionFloor: a membership change records the version it
// was derived from; once version 5 removed node 3, a change derived from
// version 4 (a leader whose application lags) is refused by the proposer,
// and one that reaches the log all the same is applied as no change on
// every node. The floor survives a restart, also from a snapshot.
func TestMembershipVersionFloor(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 20; cfg.CatchUpEntries = 5 })
	lead := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	drop := lead%3 + 1
	keep := []uint64{1, 2, 3}
	keep = slices.DeleteFunc(keep, func(id uint64) bool { return id == drop })
	ln := c.nodes[lead].node()
	if err := ln.ChangeMembership(ctx, MembershipChange{Remove: true, Peer: Peer{ID: drop}, Version: 5}); err != nil {
		t.Fatalf("remove at version 5: %v", err)
	}
	c.stop(drop)
	delete(c.nodes, drop)
	c.size = 2
	for _, id := range keep {
		deadline := time.Now().Add(10 * time.Second)
		for c.nodes[id].node().MembershipVersion() != 5 {
			if time.Now().After(deadline) {
				t.Fatalf("node %d: membership version %d, want 5", id, c.nodes[id].node().MembershipVersion())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	back := Peer{ID: drop, Addr: fmt.Sprintf("n%d", drop), Name: fmt.Sprintf("m%d", drop)}
	if err := ln.ChangeMembership(ctx, MembershipChange{Peer: back, Version: 4}); !errors.Is(err, ErrStaleMembership) {
		t.Fatalf("add at version 4 after version 5: %v, want ErrStaleMembership", err)
	}
	// Past the proposer's check (it read the floor before the newer change
	// was applied): every node refuses it when applying.
	seq := ln.seq.Add(1)
	w := &waiter{ch: make(chan uint64, 1)}
	ln.wmu.Lock()
	ln.waits[seq] = w
	ln.wmu.Unlock()
	cc := raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: drop, Context: confContext(ln.ID(), seq, back, 4)}
	if err := ln.rn.ProposeConfChange(ctx, cc); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.ch:
		if !errors.Is(w.err, ErrStaleMembership) {
			t.Fatalf("stale change in the log: %v, want ErrStaleMembership", w.err)
		}
	case <-ctx.Done():
		t.Fatal("stale change never applied")
	}
	// Entries after it (enough for snapshots) commit as usual.
	c.propose(ctx, "after", 2, 60, nil)
	c.waitApplied(60, 30*time.Second)
	for _, id := range keep {
		st := c.nodes[id].node().Status()
		if !slices.Equal(sorted(st.Voters), keep) || st.MembershipVersion != 5 {
			t.Fatalf("node %d: voters %v, membership version %d; want %v, 5", id, st.Voters, st.MembershipVersion, keep)
		}
	}
	// A change from version 5 or later is taken. (Raft drops a conf change
	// proposed before it has taken the last one as applied: retry.)
	change := func(mc MembershipChange) {
		t.Helper()
		for {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			err := c.nodes[c.leader(10*time.Second)].node().ChangeMembership(cctx, mc)
			ccancel()
			if err == nil {
				return
			}
			if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%+v: %v", mc, err)
			}
		}
	}
	change(MembershipChange{Peer: back, Version: 6})
	change(MembershipChange{Remove: true, Peer: Peer{ID: drop}, Version: 6})

	// Restarts: from the snapshot (taken after every change) and the log.
	for _, id := range keep {
		c.stop(id)
	}
	c.tune = func(cfg *Config) {
		cfg.SnapshotEvery, cfg.CatchUpEntries = 20, 5
		cfg.Peers = []Peer{{ID: cfg.ID}} // the log and the snapshot know the rest
	}
	for _, id := range keep {
		c.start(id)
	}
	c.leader(10 * time.Second)
	for _, id := range keep {
		n := c.nodes[id].node()
		if n.Status().SnapshotIndex == 0 {
			t.Errorf("node %d: no snapshot, the test does not cover the snapshot's floor", id)
		}
		deadline := time.Now().Add(10 * time.Second)
		for n.MembershipVersion() != 6 || !slices.Equal(sorted(n.Status().Voters), keep) {
			if time.Now().After(deadline) {
				t.Fatalf("node %d after restart: membership version %d, voters %v; want 6, %v", id, n.MembershipVersion(), n.Status().Voters, keep)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// warnLog keeps the messages of WARN and above lines, for tests that
// check what a node warned about.
type warnLog struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnLog) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}
func (w *warnLog) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnLog) WithGroup(string) slog.Handler      { return w }

func (w *warnLog) count(substr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// TestJoiningNodeDoesNotWarnOfRemoval: a node added after the cluster
// formed replays the log from its first entries, whose configuration does
// not name it yet. It used to warn "this node was removed from the raft
// cluster" there, which misled operators onboarding a member; the warning
// is for its actual removal, which it still gets.
func TestJoiningNodeDoesNotWarnOfRemoval(t *testing.T) {
	c := newCluster(t, 3, nil) // no snapshots: the new node replays from index 1
	lead := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.propose(ctx, "a", 2, 20, nil)
	if err := c.nodes[lead].node().AddPeer(ctx, Peer{ID: 4, Addr: "n4", Name: "m4"}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
	warns := &warnLog{}
	c.size = 4
	tn := &testNode{id: 4, dir: filepath.Join(t.TempDir(), "n4"), app: &testApp{}}
	tn.app.fetch = c.fetchFrom(4)
	c.nodes[4] = tn
	c.tune = func(cfg *Config) {
		if cfg.ID == 4 {
			cfg.Join, cfg.Peers = true, nil
			cfg.Logger = slog.New(warns)
		}
	}
	c.start(4)
	c.propose(ctx, "b", 2, 20, nil)
	c.waitApplied(40, 30*time.Second)
	if tn.app.snaps != 0 {
		t.Fatalf("node 4 caught up through a snapshot: it did not replay the configuration before it was added")
	}
	const msg = "this node was removed from the raft cluster"
	if n := warns.count(msg); n != 0 {
		t.Fatalf("joining node warned %d times %q", n, msg)
	}
	if err := c.nodes[c.leader(10*time.Second)].node().RemovePeer(ctx, 4); err != nil {
		t.Fatalf("RemovePeer: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for warns.count(msg) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node 4 removed but no warning %q; removed=%v", msg, tn.node().Removed())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

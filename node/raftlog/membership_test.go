package raftlog

import (
	"github.com/memberd/memberd/internal/testpki"

	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"
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
		name string
		p    Peer
	}{
		{"address only (v0)", Peer{Addr: "n1"}},
		{"empty (remove)", Peer{}},
		{"name and address", Peer{Name: "m1", Addr: "m1:7052"}},
		{"name only", Peer{Name: "m1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := confContext(7, 9, tc.p)
			prop, seq, p, ok := parseConfContext(b)
			if !ok || prop != 7 || seq != 9 || p != tc.p {
				t.Fatalf("got %d %d %+v %v", prop, seq, p, ok)
			}
			if _, _, _, ok := parseConfContext(b[:15]); ok {
				t.Fatal("short context accepted")
			}
		})
	}
	if _, _, _, ok := parseConfContext(append(confContext(1, 2, Peer{}), 0, 0, 5, 'a')); ok {
		t.Fatal("truncated name accepted")
	}

	members := []Peer{{1, "n1", "m1"}, {1 << 63, "", ""}}
	for _, tc := range []struct {
		name    string
		data    []byte
		members []Peer
		app     []byte
		bad     bool
	}{
		{"with members", encodeSnapData(members, []byte("app")), members, []byte("app"), false},
		{"no members", encodeSnapData(nil, []byte("app")), []Peer{}, []byte("app"), false},
		{"old snapshot", []byte{0, 0, 0, 0, 0, 0, 0, 5, 'h'}, nil, []byte{0, 0, 0, 0, 0, 0, 0, 5, 'h'}, false},
		{"empty", nil, nil, nil, false},
		{"truncated", encodeSnapData(members, nil)[:12], nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, app, err := decodeSnapData(tc.data)
			if (err != nil) != tc.bad {
				t.Fatalf("err %v", err)
			}
			if !slices.Equal(m, tc.members) || string(app) != string(tc.app) {
				t.Fatalf("got %v %q", m, app)
			}
		})
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
	f.Add(confContext(1, 2, Peer{Name: "m1", Addr: "m1:7052"}))
	f.Add(confContext(0, 0, Peer{Addr: "n1"}))
	f.Add(encodeSnapData([]Peer{{1, "n1", "m1"}, {2, "", ""}}, []byte("app")))
	f.Add([]byte{0xff, 'r', 'l', 'm', 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		if prop, seq, p, ok := parseConfContext(b); ok && p.Addr != "" && p.Addr[0] != 0 && len(p.Name) <= maxNameLen {
			if _, _, q, ok := parseConfContext(confContext(prop, seq, p)); !ok || q != p {
				t.Fatalf("context %+v does not round-trip: %+v", p, q)
			}
		}
		if members, app, err := decodeSnapData(b); err == nil && members != nil {
			m2, app2, err := decodeSnapData(encodeSnapData(members, app))
			if err != nil || !slices.Equal(m2, members) || string(app2) != string(app) {
				t.Fatalf("snapshot data does not round-trip: %v %q %v", m2, app2, err)
			}
		}
	})
}

package orderer

import (
	"bytes"
	"context"
	"errors"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/participation"
)

// TestRegistryJoinsThroughParticipationAPI: osnadmin-style join of a channel
// from its config block starts a node that orders; list, get and remove work.
func TestRegistryJoinsThroughParticipationAPI(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond})
	reg := testRegistry(t, c, nil)
	defer reg.Close()
	go reg.Run(t.Context())
	h, err := participation.New(participation.Config{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	raw, _ := block.Marshal(c.genesis)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("config-block", "trade.block")
	fw.Write(raw)
	mw.Close()
	resp, err := http.Post(srv.URL+participation.URLBase, mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("join: %s", resp.Status)
	}
	n := reg.Lookup("trade")
	if n == nil {
		t.Fatal("joined channel not served")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !n.IsLeader() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	env, _, _ := NewTransaction(c.identity(t, "m1", "client"), "trade", []byte("joined"), time.Now())
	rawEnv, _ := marshalEnv.Marshal(env)
	if err := n.Submit(t.Context(), rawEnv); err != nil {
		t.Fatalf("submit on the joined channel: %v", err)
	}
	if got, err := reg.Get("trade"); err != nil || got.Height != 2 || got.ConsensusRelation != "consenter" {
		t.Fatalf("get: %+v %v", got, err)
	}
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+participation.URLBase+"/trade", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || reg.Lookup("trade") != nil || len(reg.List()) != 0 {
		t.Fatalf("remove: %s", resp.Status)
	}
}

// TestRegistryLifecycle: a node started before Run does not run until Run
// does; Run runs it until ctx ends and then returns nil; nothing starts
// after that or after Close; Close is idempotent.
func TestRegistryLifecycle(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond})
	reg := testRegistry(t, c, nil)
	defer reg.Close()
	n, err := reg.Open("trade", c.genesis)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(n); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a one-node raft elects itself within this once it runs
	if n.IsLeader() {
		t.Fatal("the node runs before Registry.Run")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- reg.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !n.IsLeader() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !n.IsLeader() {
		t.Fatal("the node started before Run does not run under Run")
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	n2, err := reg.Open("other", c.genesis)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if err := reg.Start(n2); !errors.Is(err, ErrRegistryClosed) {
		t.Fatalf("Start after Run returned = %v, want ErrRegistryClosed", err)
	}
	if err := reg.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := reg.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := reg.Run(t.Context()); !errors.Is(err, ErrRegistryClosed) {
		t.Fatalf("Run after Close = %v, want ErrRegistryClosed", err)
	}
	if _, err := reg.Join(t.Context(), c.genesis); err == nil {
		t.Fatal("Join after Close succeeded")
	}
}

// testRegistry is a Registry whose nodes are m1's single-node channels of c
// under a test directory, with metrics m (nil: none).
func testRegistry(t testing.TB, c *consortium, m *Metrics) *Registry {
	dir := t.TempDir()
	nodeID := c.nodeIdentity(t, "m1", "n1")
	return &Registry{Open: func(ch string, b *common.Block) (*Node, error) {
		return New(Config{Raft: raftLocal(t, filepath.Join(dir, ch)), BlockDir: filepath.Join(dir, ch, "blocks"), Genesis: b,
			Signer: nodeID.Signer, Identity: nodeID.Serialized(), Policy: c.policy, Metrics: m})
	}}
}

// startedRegistry is testRegistry with the node of c's genesis channel
// started (not yet run).
func startedRegistry(t *testing.T, c *consortium) (*Registry, *Node) {
	t.Helper()
	reg := testRegistry(t, c, nil)
	n, err := reg.Open("trade", c.genesis)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(n); err != nil {
		t.Fatal(err)
	}
	return reg, n
}

// TestRegistryHalt: a halted node stops ordering (its Run ends, it is
// unhealthy) but stays listed with its blocks readable; a node halted
// before Run never runs.
func TestRegistryHalt(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond})
	for _, early := range []bool{false, true} {
		reg, n := startedRegistry(t, c)
		if early {
			if err := reg.Halt("trade"); err != nil {
				t.Fatal(err)
			}
		}
		go reg.Run(t.Context())
		if !early {
			deadline := time.Now().Add(10 * time.Second)
			for !n.IsLeader() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !n.IsLeader() {
				t.Fatal("no leader")
			}
			for range 2 { // the second does nothing
				if err := reg.Halt("trade"); err != nil {
					t.Fatal(err)
				}
			}
		} else {
			time.Sleep(300 * time.Millisecond) // a one-node raft elects itself within this once it runs
			if n.IsLeader() {
				t.Fatal("a node halted before Run ran under Run")
			}
		}
		if err := reg.Halt("none"); !errors.Is(err, participation.ErrNotFound) {
			t.Fatalf("Halt of an unknown channel = %v, want ErrNotFound", err)
		}
		if err := n.Healthy(); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("early %v: Healthy after Halt = %v, want unavailable", early, err)
		}
		if !early {
			envs, _ := envelopes(t, c.identity(t, "m1", "client"), 1, 100)
			raw, _ := proto.Marshal(envs[0])
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			_, err := n.Order(ctx, raw)
			late := ctx.Err()
			cancel()
			if !errors.Is(err, ErrUnavailable) || late != nil {
				t.Fatalf("Order after Halt = %v, want unavailable at once", err)
			}
		}
		if reg.Lookup("trade") != n {
			t.Fatalf("early %v: not listed after Halt", early)
		}
		if _, err := n.Store().Get(0); err != nil {
			t.Fatalf("early %v: genesis unreadable after Halt: %v", early, err)
		}
		if err := reg.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRegistryHaltRemoveWhileRunStarts: Halt or Remove (a policy callback)
// racing Run's start of the same channel leaves the node stopped, and the
// race detector sees no unsynchronised access to the node's cancel and done.
func TestRegistryHaltRemoveWhileRunStarts(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond})
	for i := range 6 {
		remove := i%2 == 1
		reg, n := startedRegistry(t, c)
		ctx, cancel := context.WithCancel(t.Context())
		start := make(chan struct{})
		runc, stopc := make(chan error, 1), make(chan error, 1)
		go func() { <-start; runc <- reg.Run(ctx) }()
		go func() {
			<-start
			if remove {
				stopc <- reg.Remove(t.Context(), "trade")
			} else {
				stopc <- reg.Halt("trade")
			}
		}()
		close(start)
		if err := <-stopc; err != nil {
			t.Fatalf("round %d (remove %v): %v", i, remove, err)
		}
		time.Sleep(300 * time.Millisecond) // a one-node raft elects itself within this once it runs
		if n.IsLeader() {
			t.Fatalf("round %d (remove %v): the node runs after it was stopped", i, remove)
		}
		cancel()
		if err := <-runc; err != nil {
			t.Fatalf("round %d: Run = %v", i, err)
		}
		if err := reg.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

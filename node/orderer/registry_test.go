package orderer

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/participation"
)

// TestRegistryJoinsThroughParticipationAPI: osnadmin-style join of a channel
// from its config block starts a node that orders; list, get and remove work.
func TestRegistryJoinsThroughParticipationAPI(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond})
	dir := t.TempDir()
	nodeID := c.nodeIdentity(t, "m1", "n1")
	reg := &Registry{Open: func(ch string, b *common.Block) (*Node, error) {
		return New(Config{Raft: raftLocal(t, filepath.Join(dir, ch)), BlockDir: filepath.Join(dir, ch, "blocks"), Genesis: b,
			Signer: nodeID.Signer, Identity: nodeID.Serialized(), Policy: c.policy})
	}}
	defer reg.Close()
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

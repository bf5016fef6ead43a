package orderer

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// m3ReadOnly makes member m3 a consenter and reader, not a writer.
func m3ReadOnly(d *policy.Document) {
	d.Members[2].Roles = []policy.Role{policy.RoleConsenter, policy.RoleReader}
}

// rawEnvelope builds an envelope with full control over its parts.
type envSpec struct {
	id      Identity
	typ     common.HeaderType
	channel string
	data    []byte
	ts      time.Time
	// mutations
	noCreator, badTxID, badSig, highS bool
	claimMSP                          string
}

func (s envSpec) build(t testing.TB) *common.Envelope {
	t.Helper()
	if s.channel == "" {
		s.channel = "trade"
	}
	if s.ts.IsZero() {
		s.ts = time.Now()
	}
	nonce := make([]byte, block.NonceSize)
	rand.Read(nonce)
	id := s.id
	if s.claimMSP != "" {
		id.MSPID = s.claimMSP
	}
	creator := id.Serialized()
	txid := block.ComputeTxID(nonce, creator)
	if s.badTxID {
		txid = block.ComputeTxID(nonce, []byte("someone else"))
	}
	if s.noCreator {
		creator = nil
	}
	ch, _ := proto.Marshal(&common.ChannelHeader{Type: int32(s.typ), ChannelId: s.channel, TxId: txid, Timestamp: timestamppb.New(s.ts)})
	sh, _ := proto.Marshal(&common.SignatureHeader{Creator: creator, Nonce: nonce})
	payload, _ := proto.Marshal(&common.Payload{Header: &common.Header{ChannelHeader: ch, SignatureHeader: sh}, Data: s.data})
	sig, err := s.id.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	if s.badSig {
		sig, _ = s.id.Sign([]byte("other bytes"))
	}
	if s.highS {
		var v struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(sig, &v); err != nil {
			t.Fatal(err)
		}
		v.S.Sub(s.id.Cert.PublicKey.(*ecdsa.PublicKey).Curve.Params().N, v.S)
		sig, _ = asn1.Marshal(v)
	}
	return &common.Envelope{Payload: payload, Signature: sig}
}

// broadcastOne sends one envelope on a fresh stream and returns the status.
func broadcastOne(t *testing.T, c ab.AtomicBroadcastClient, env *common.Envelope) (common.Status, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.Broadcast(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(env); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	s.CloseSend()
	return r.Status, r.Info
}

// broadcastToLeader sends env to the current raft leader until it is
// answered SUCCESS (or refused as already ordered), resending after
// SERVICE_UNAVAILABLE: a leader change on a loaded machine is not what the
// callers test. Any other answer fails t.
func (cl *cluster) broadcastToLeader(t *testing.T, env *common.Envelope) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, info := broadcastOne(t, cl.nodes[cl.leader(10*time.Second)-1].client, env)
		switch {
		case st == common.Status_SUCCESS, strings.Contains(info, ErrDuplicate.Error()):
			return
		case st != common.Status_SERVICE_UNAVAILABLE || time.Now().After(deadline):
			t.Fatalf("%s %s", st, info)
		}
		t.Logf("resending after %s %s", st, info)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBroadcastAdmission: every rejection reason and its status.
func TestBroadcastAdmission(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, AbsoluteMaxBytes: 8192, PreferredMaxBytes: 8192,
		BatchTimeout: 50 * time.Millisecond}, nil, m3ReadOnly)
	l := cl.leader(10 * time.Second)
	leader := cl.nodes[l-1].client
	w := cl.c.identity(t, "m1", "writer")
	reader := cl.c.identity(t, "m3", "reader")
	oc := testpki.NewCA(t, "outsider").Issue(t, "outsider")
	outsider := Identity{MSPID: "m1MSP", Cert: oc.Cert, Signer: oc.Key}
	dup := envSpec{id: w, typ: common.HeaderType_ENDORSER_TRANSACTION, data: []byte("dup")}.build(t)

	tx := common.HeaderType_ENDORSER_TRANSACTION
	cases := []struct {
		name string
		env  *common.Envelope
		want common.Status
	}{
		{"valid", envSpec{id: w, typ: tx, data: []byte("hello")}.build(t), common.Status_SUCCESS},
		{"malformed payload", &common.Envelope{Payload: []byte{0xff, 0xff, 0xff}, Signature: []byte{1}}, common.Status_BAD_REQUEST},
		{"empty envelope", &common.Envelope{}, common.Status_BAD_REQUEST},
		{"too large", envSpec{id: w, typ: tx, data: make([]byte, 9000)}.build(t), common.Status_REQUEST_ENTITY_TOO_LARGE},
		{"other channel", envSpec{id: w, typ: tx, channel: "other", data: []byte("x")}.build(t), common.Status_NOT_FOUND},
		{"config update", envSpec{id: w, typ: common.HeaderType_CONFIG_UPDATE, data: []byte("x")}.build(t), common.Status_FORBIDDEN},
		{"header type MESSAGE", envSpec{id: w, typ: common.HeaderType_MESSAGE, data: []byte("x")}.build(t), common.Status_BAD_REQUEST},
		{"no creator", envSpec{id: w, typ: tx, data: []byte("x"), noCreator: true}.build(t), common.Status_BAD_REQUEST},
		{"tx id not bound to nonce and creator", envSpec{id: w, typ: tx, data: []byte("x"), badTxID: true}.build(t), common.Status_BAD_REQUEST},
		{"bad signature", envSpec{id: w, typ: tx, data: []byte("x"), badSig: true}.build(t), common.Status_FORBIDDEN},
		{"high-S signature", envSpec{id: w, typ: tx, data: []byte("x"), highS: true}.build(t), common.Status_FORBIDDEN},
		{"creator not issued by a member CA", envSpec{id: outsider, typ: tx, data: []byte("x")}.build(t), common.Status_FORBIDDEN},
		{"creator claims another member's MSP", envSpec{id: w, typ: tx, data: []byte("x"), claimMSP: "m2MSP"}.build(t), common.Status_FORBIDDEN},
		{"member without writer role", envSpec{id: reader, typ: tx, data: []byte("x")}.build(t), common.Status_FORBIDDEN},
		{"first of a pair", dup, common.Status_SUCCESS},
		{"duplicate tx id", dup, common.Status_BAD_REQUEST},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, info := broadcastOne(t, leader, c.env)
			if got != c.want {
				t.Fatalf("status %s (%s), want %s", got, info, c.want)
			}
			if got != common.Status_SUCCESS && info == "" {
				t.Fatal("refusal without an explanation in Info")
			}
			t.Logf("%s: %s", got, info)
		})
	}
	// CONFIG_UPDATE (peer channel update) says how to change the channel.
	_, cuInfo := broadcastOne(t, leader, envSpec{id: w, typ: common.HeaderType_CONFIG_UPDATE, data: []byte("y")}.build(t))
	for _, want := range []string{"memberd policy sign", "memberd policy push", "CONFIG block"} {
		if !strings.Contains(cuInfo, want) {
			t.Errorf("CONFIG_UPDATE refusal %q does not say %q", cuInfo, want)
		}
	}
	// A follower without a Forwarder redirects to the leader.
	f := l%3 + 1
	got, info := broadcastOne(t, cl.nodes[f-1].client, envSpec{id: w, typ: tx, data: []byte("to follower")}.build(t))
	if got != common.Status_SERVICE_UNAVAILABLE {
		t.Fatalf("follower answered %s (%s), want SERVICE_UNAVAILABLE", got, info)
	}
	t.Logf("follower: %s", info)
}

func pos(n uint64) *ab.SeekPosition {
	return &ab.SeekPosition{Type: &ab.SeekPosition_Specified{Specified: &ab.SeekSpecified{Number: n}}}
}

var (
	oldest = &ab.SeekPosition{Type: &ab.SeekPosition_Oldest{Oldest: &ab.SeekOldest{}}}
	newest = &ab.SeekPosition{Type: &ab.SeekPosition_Newest{Newest: &ab.SeekNewest{}}}
	next   = &ab.SeekPosition{Type: &ab.SeekPosition_NextCommit{NextCommit: &ab.SeekNextCommit{}}}
)

// deliverAll runs one Deliver request and returns block numbers and the status.
func deliverAll(t *testing.T, c ab.AtomicBroadcastClient, env *common.Envelope, during func()) ([]uint64, common.Status) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.Deliver(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(env); err != nil {
		t.Fatal(err)
	}
	if during != nil {
		go during()
	}
	var nums []uint64
	for {
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch v := r.Type.(type) {
		case *ab.DeliverResponse_Block:
			nums = append(nums, v.Block.Header.Number)
			if v.Block.Data == nil && len(nums) > 0 {
				nums[len(nums)-1] += 1000 // mark header-only
			}
		case *ab.DeliverResponse_Status:
			return nums, v.Status
		}
	}
}

// TestDeliverSemantics: every SeekInfo case and status.
func TestDeliverSemantics(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 1, BatchTimeout: 50 * time.Millisecond}, nil)
	l := cl.leader(10 * time.Second)
	lc := cl.nodes[l-1].client
	w := cl.c.identity(t, "m1", "writer")
	for i := range 3 { // blocks 1..3
		cl.broadcastToLeader(t, envSpec{id: w, typ: common.HeaderType_ENDORSER_TRANSACTION, data: []byte{byte(i)}}.build(t))
	}
	cl.waitHeight(4, 10*time.Second)
	rd := cl.c.identity(t, "m2", "reader")
	oc := testpki.NewCA(t, "outsider").Issue(t, "outsider")
	outsider := Identity{MSPID: "m1MSP", Cert: oc.Cert, Signer: oc.Key}
	seek := func(start, stop *ab.SeekPosition, b ab.SeekInfo_SeekBehavior) []byte {
		d, _ := proto.Marshal(&ab.SeekInfo{Start: start, Stop: stop, Behavior: b})
		return d
	}
	seekEnv := func(d []byte) *common.Envelope {
		return envSpec{id: rd, typ: common.HeaderType_DELIVER_SEEK_INFO, data: d}.build(t)
	}
	submit := func() {
		time.Sleep(200 * time.Millisecond)
		broadcastOne(t, lc, envSpec{id: w, typ: common.HeaderType_ENDORSER_TRANSACTION, data: []byte("later")}.build(t))
	}
	headers, _ := proto.Marshal(&ab.SeekInfo{Start: pos(1), Stop: pos(2), ContentType: ab.SeekInfo_HEADER_WITH_SIG})
	ready := ab.SeekInfo_BLOCK_UNTIL_READY
	fail := ab.SeekInfo_FAIL_IF_NOT_READY
	cases := []struct {
		name   string
		env    *common.Envelope
		during func()
		want   []uint64
		status common.Status
	}{
		{"oldest to newest", seekEnv(seek(oldest, newest, ready)), nil, []uint64{0, 1, 2, 3}, common.Status_SUCCESS},
		{"specified range", seekEnv(seek(pos(1), pos(2), ready)), nil, []uint64{1, 2}, common.Status_SUCCESS},
		{"newest only", seekEnv(seek(newest, newest, fail)), nil, []uint64{3}, common.Status_SUCCESS},
		{"oldest only", seekEnv(seek(oldest, oldest, fail)), nil, []uint64{0}, common.Status_SUCCESS},
		{"header with signatures", seekEnv(headers), nil, []uint64{1001, 1002}, common.Status_SUCCESS},
		{"start after stop", seekEnv(seek(pos(3), pos(1), ready)), nil, nil, common.Status_BAD_REQUEST},
		{"fail if not ready, start past height", seekEnv(seek(pos(10), pos(12), fail)), nil, nil, common.Status_NOT_FOUND},
		{"fail if not ready, stop past height", seekEnv(seek(pos(2), pos(10), fail)), nil, []uint64{2, 3}, common.Status_NOT_FOUND},
		{"block until ready waits for the next block", seekEnv(seek(pos(4), pos(4), ready)), submit, []uint64{4}, common.Status_SUCCESS},
		{"next commit", seekEnv(seek(next, next, ready)), submit, []uint64{5}, common.Status_SUCCESS},
		{"no stop position", seekEnv(func() []byte { d, _ := proto.Marshal(&ab.SeekInfo{Start: oldest}); return d }()), nil, nil, common.Status_BAD_REQUEST},
		{"seek info not decodable", seekEnv([]byte{0xff, 0xff}), nil, nil, common.Status_BAD_REQUEST},
		{"malformed envelope", &common.Envelope{Payload: []byte{0xff}}, nil, nil, common.Status_BAD_REQUEST},
		{"not a seek envelope", envSpec{id: rd, typ: common.HeaderType_ENDORSER_TRANSACTION, data: seek(oldest, newest, ready)}.build(t), nil, nil, common.Status_BAD_REQUEST},
		{"timestamp outside the window", envSpec{id: rd, typ: common.HeaderType_DELIVER_SEEK_INFO, data: seek(oldest, newest, ready), ts: time.Now().Add(-time.Hour)}.build(t), nil, nil, common.Status_BAD_REQUEST},
		{"unknown channel", envSpec{id: rd, typ: common.HeaderType_DELIVER_SEEK_INFO, channel: "nope", data: seek(oldest, newest, ready)}.build(t), nil, nil, common.Status_NOT_FOUND},
		{"creator not a member", envSpec{id: outsider, typ: common.HeaderType_DELIVER_SEEK_INFO, data: seek(oldest, newest, ready)}.build(t), nil, nil, common.Status_FORBIDDEN},
		{"bad signature", envSpec{id: rd, typ: common.HeaderType_DELIVER_SEEK_INFO, data: seek(oldest, newest, ready), badSig: true}.build(t), nil, nil, common.Status_FORBIDDEN},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, st := deliverAll(t, lc, c.env, c.during)
			if st != c.status || !equalNums(got, c.want) {
				t.Fatalf("blocks %v status %s, want %v %s", got, st, c.want, c.status)
			}
		})
	}

	// Cut off from consensus: STRICT answers SERVICE_UNAVAILABLE,
	// BEST_EFFORT still serves what the node has.
	f := l%3 + 1
	for _, tn := range cl.nodes {
		if tn.id != f {
			cl.stop(tn.id)
		}
	}
	fc := cl.nodes[f-1].client
	deadline := time.Now().Add(10 * time.Second)
	for cl.node(f).Raft().Leader() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if _, st := deliverAll(t, fc, seekEnv(seek(oldest, newest, ready)), nil); st != common.Status_SERVICE_UNAVAILABLE {
		t.Fatalf("strict without a leader: %s, want SERVICE_UNAVAILABLE", st)
	}
	be, _ := proto.Marshal(&ab.SeekInfo{Start: oldest, Stop: pos(1), ErrorResponse: ab.SeekInfo_BEST_EFFORT})
	if got, st := deliverAll(t, fc, seekEnv(be), nil); st != common.Status_SUCCESS || !equalNums(got, []uint64{0, 1}) {
		t.Fatalf("best effort without a leader: %v %s", got, st)
	}
}

func equalNums(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestConfigValidate(t *testing.T) {
	c := newConsortium(t, 1, block.CutterConfig{})
	id := c.nodeIdentity(t, "m1", "n1")
	good := func() Config {
		return Config{BlockDir: "/x", Signer: id.Signer, Identity: id.Serialized(), Policy: c.policy}
	}
	cases := []struct {
		name string
		edit func(*Config)
		ok   bool
	}{
		{"valid", func(*Config) {}, true},
		{"no block dir", func(c *Config) { c.BlockDir = "" }, false},
		{"no signer", func(c *Config) { c.Signer = nil }, false},
		{"no identity", func(c *Config) { c.Identity = nil }, false},
		{"no policy", func(c *Config) { c.Policy = nil }, false},
		{"raft apply set by caller", func(c *Config) { c.Raft.Applied = 3 }, false},
		{"negative timeout", func(c *Config) { c.SubmitTimeout = -1 }, false},
		{"bad batch", func(c *Config) { c.Batch = block.CutterConfig{PreferredMaxBytes: 10, AbsoluteMaxBytes: 5} }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			tc.edit(&cfg)
			err := cfg.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("%v does not wrap ErrInvalidConfig", err)
			}
		})
	}
	if _, err := NewServer(ServerConfig{}); err == nil {
		t.Fatal("NewServer without Lookup accepted")
	}
}

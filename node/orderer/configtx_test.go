package orderer

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/channelconfig/channelconfigtest"
	"github.com/memberd/memberd/policy"
)

// waitLastConfig waits until every running node's config in force is that
// of a block after 0, and returns its number.
func (cl *cluster) waitLastConfig(timeout time.Duration) uint64 {
	cl.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var num uint64
		all := true
		for _, tn := range cl.nodes {
			if n := tn.np.Load(); n != nil {
				if lc := n.LastConfig(); lc == 0 || (num != 0 && lc != num) {
					all = false
				} else {
					num = lc
				}
			}
		}
		if all && num != 0 {
			return num
		}
		if time.Now().After(deadline) {
			cl.t.Fatalf("no config block on every node within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// withConfigSignatures returns p with every member admin's signature
// (an OU=admin certificate from its CA) on the ConfigUpdate that p derives
// from the config in force on the running node id.
func (cl *cluster) withConfigSignatures(t *testing.T, id uint64, p *policy.Policy) *policy.Policy {
	t.Helper()
	u, err := cl.node(id).nextConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range p.Members() {
		ca := cl.c.cons.CAs[m.ID]
		if ca == nil {
			continue
		}
		admin := ca.Issue(t, m.ID+" admin", testpki.OU(channelconfig.AdminOU))
		id := Identity{MSPID: m.MSPID, Cert: admin.Cert, Signer: admin.Key}
		raw, err := channelconfig.SignConfigUpdate(u, channelconfig.Signer{Key: admin.Key, Identity: id.Serialized()}, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		p = p.WithConfigSignature(policy.ConfigSignature{Member: m.ID, KeyID: "a1", Raw: raw})
	}
	return p
}

// proposeRefused proposes config entry data through node l's raft (as a
// faulty leader would) for the block after the store's tip, and checks
// that every node refuses it: an ordinary transaction then takes the
// block number, the chains stay equal and no node's config changes.
func (cl *cluster) proposeRefused(t *testing.T, l uint64, data []byte) {
	t.Helper()
	n := cl.node(l)
	h := n.Store().LastHeader()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := n.raft.ProposeWait(ctx, data); err != nil {
		t.Fatal(err)
	}
	w := cl.c.identity(t, "m1", "writer")
	envs, ids := envelopes(t, w, 1, 16)
	res := newLoadResult()
	if _, err := broadcast(ctx, cl.nodes[l-1].client, envs, ids, res); err != nil || len(res.success) != 1 {
		t.Fatalf("broadcast after the refused config block: %v %v", err, res.other)
	}
	cl.waitHeight(h.Number+2, 10*time.Second)
	cl.checkIdentical()
	for _, tn := range cl.nodes {
		nn := tn.np.Load()
		if nn.LastConfig() != 0 || nn.ChannelConfig().Sequence != 0 {
			t.Fatalf("node %d put the refused config in force", tn.id)
		}
		got, err := nn.Store().Get(h.Number + 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := channelconfig.BlockConfig(got); err == nil {
			t.Fatalf("node %d stored the refused config block", tn.id)
		}
	}
}

// configEntryFor returns a config entry for the block after n's tip: the
// CONFIG transaction n derives from policy p (with p's admin signatures),
// in an entry that names policy version named.
func configEntryFor(t *testing.T, n *Node, p, named *policy.Policy) []byte {
	t.Helper()
	u, err := n.nextConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	h := n.Store().LastHeader()
	b, err := n.configBlock(u, p, h.Number+1, block.HeaderHash(h))
	if err != nil {
		t.Fatal(err)
	}
	data, err := encodeConfigEntry(b, named.Version(), named.Hash())
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func (cl *cluster) reconcileAll() {
	for _, tn := range cl.nodes {
		if n := tn.np.Load(); n != nil {
			n.Reconcile()
		}
	}
}

// TestConfigBlockFromPolicy: a policy version that adds a member and lowers
// the batch size becomes a CONFIG block of its own on a running cluster:
// Sequence 1, LastUpdate equal to what the stock configtxlator
// compute_update gives between the two configs, LAST_CONFIG of every later
// block pointing to it, the new member's MSP in force and the new batch
// size cutting from the block after it, also after a restart.
func TestConfigBlockFromPolicy(t *testing.T) {
	fab := testenv.Fabric(t, "configtxlator")
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 300 * time.Millisecond},
		func(c *Config) { c.FixedBatches, c.ConfigBlocks = true, true })
	l := cl.leader(10 * time.Second)
	w := cl.c.identity(t, "m1", "writer")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	send := func(from, count int) {
		t.Helper()
		envs, ids := envelopes(t, w, from+count, 64)
		res := newLoadResult()
		if _, err := broadcast(ctx, cl.nodes[l-1].client, envs[from:], ids[from:], res); err != nil {
			t.Fatal(err)
		}
		if len(res.success) != count {
			t.Fatalf("%d of %d envelopes ordered: %v", len(res.success), count, res.other)
		}
	}
	send(0, 5) // one block of 5 (MaxMessageCount 10, cut at the timeout)
	before := cl.node(l).Height()

	next := cl.c.cons.Next(t, cl.c.policy(), func(d *policy.Document) {
		d.Members = append(d.Members, cl.c.cons.NewMember(t, "m4"))
		d.Ledger.BatchSize.MaxMessageCount = 2
	})
	// Without admin signatures on its ConfigUpdate, the version orders no
	// CONFIG block (stock peers would stop at it)...
	cl.c.cur.Store(next)
	cl.reconcileAll()
	time.Sleep(time.Second)
	if lc := cl.node(l).LastConfig(); lc != 0 {
		t.Fatalf("config block %d ordered for a version whose ConfigUpdate no admin signed", lc)
	}
	// ...with the members' admins' signatures it does.
	cl.c.cur.Store(cl.withConfigSignatures(t, l, next))
	cl.reconcileAll()
	num := cl.waitLastConfig(15 * time.Second)
	if num != before {
		t.Fatalf("config block is block %d, want the next block %d", num, before)
	}
	cl.waitHeight(num+1, 10*time.Second)

	cfgBlock, err := cl.node(l).Store().Get(num)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgBlock.Data.Data) != 1 {
		t.Fatalf("config block holds %d envelopes, want 1 (a block of its own)", len(cfgBlock.Data.Data))
	}
	ce, cue, err := channelconfig.ConfigTransactionOf(cfgBlock)
	if err != nil {
		t.Fatal(err)
	}
	if ce.Config.Sequence != 1 || len(cue.Signatures) != 4 {
		t.Fatalf("config sequence %d with %d admin signatures, want 1 and 4 (every valid one is carried)", ce.Config.Sequence, len(cue.Signatures))
	}
	for _, tn := range cl.nodes {
		n := tn.np.Load()
		ch := n.ChannelConfig()
		if ch.Sequence != 1 || n.BatchConfig().MaxMessageCount != 2 {
			t.Fatalf("node %d: sequence %d batch %+v in force, want 1 and MaxMessageCount 2", tn.id, ch.Sequence, n.BatchConfig())
		}
		if _, ok := ch.Group.Groups["Application"].Groups["m4MSP"]; !ok {
			t.Fatalf("node %d: the new member's MSP m4MSP is not in the Application group in force", tn.id)
		}
	}

	// The delta is what the stock configtxlator computes between the two.
	gen, err := cl.node(l).Store().Get(0)
	if err != nil {
		t.Fatal(err)
	}
	_, oldCfg, err := channelconfig.BlockConfig(gen)
	if err != nil {
		t.Fatal(err)
	}
	want, got := channelconfigtest.ComputeUpdate(t, "trade", oldCfg, ce.Config), new(common.ConfigUpdate)
	if err := proto.Unmarshal(cue.ConfigUpdate, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(want, got) {
		t.Fatalf("LastUpdate differs from configtxlator compute_update:\nmemberd:       %v\nconfigtxlator: %v", got, want)
	}
	// The stock tool reads the block as a Fabric block.
	bin := filepath.Join(fab, "bin", "configtxlator")
	blockPB := channelconfigtest.WriteProto(t, t.TempDir(), "config.block", cfgBlock)
	js, err := exec.Command(bin, "proto_decode", "--type", "common.Block", "--input", blockPB).Output()
	if err != nil {
		t.Fatalf("configtxlator proto_decode: %v", err)
	}
	var decoded struct {
		Data struct {
			Data []struct {
				Payload struct {
					Header struct {
						ChannelHeader struct {
							Type int `json:"type"`
						} `json:"channel_header"`
					} `json:"header"`
					Data struct {
						Config struct {
							Sequence string `json:"sequence"`
						} `json:"config"`
					} `json:"data"`
				} `json:"payload"`
			} `json:"data"`
		} `json:"data"`
	}
	if err := json.Unmarshal(js, &decoded); err != nil {
		t.Fatal(err)
	}
	if d := decoded.Data.Data; len(d) != 1 || d[0].Payload.Header.ChannelHeader.Type != int(common.HeaderType_CONFIG) || d[0].Payload.Data.Config.Sequence != "1" {
		t.Fatalf("configtxlator proto_decode of the config block: %+v", decoded)
	}
	if !strings.Contains(string(js), "m4MSP") {
		t.Fatal("configtxlator proto_decode of the config block does not show the new member's MSP")
	}

	// The new batch size cuts from the block after the config block.
	send(5, 5)
	cl.waitHeight(num+4, 10*time.Second)
	cl.checkIdentical()
	n := cl.node(l)
	for i := uint64(1); i < n.Height(); i++ {
		b, err := n.Store().Get(i)
		if err != nil {
			t.Fatal(err)
		}
		lc, err := block.LastConfigIndex(b)
		if err != nil {
			t.Fatal(err)
		}
		wantLC, maxTx := uint64(0), 10
		if i >= num {
			wantLC, maxTx = num, 2
		}
		if i == num {
			maxTx = 1
		}
		if lc != wantLC || len(b.Data.Data) > maxTx {
			t.Fatalf("block %d: LAST_CONFIG %d with %d envelopes, want %d and at most %d", i, lc, len(b.Data.Data), wantLC, maxTx)
		}
		if i == num+1 && len(b.Data.Data) != 2 {
			t.Fatalf("block %d after the config block holds %d envelopes, want 2 (MaxMessageCount 2)", i, len(b.Data.Data))
		}
	}

	// A restarted node reads the config in force from its store.
	f := l%3 + 1
	cl.stop(f)
	cl.start(f)
	if nf := cl.node(f); nf.LastConfig() != num || nf.BatchConfig().MaxMessageCount != 2 {
		t.Fatalf("restarted node %d: last config %d batch %+v", f, nf.LastConfig(), nf.BatchConfig())
	}
	// And the same policy version orders no second config block.
	cl.reconcileAll()
	time.Sleep(time.Second)
	for _, tn := range cl.nodes {
		if lc := tn.np.Load().LastConfig(); lc != num {
			t.Fatalf("node %d: last config %d after a second look at the same policy, want %d", tn.id, lc, num)
		}
	}
}

// TestConfigBlockMismatchRefused: a config entry whose transaction is not
// the one every node derives from the policy version it names is stored by
// no node, and ordering goes on after it.
func TestConfigBlockMismatchRefused(t *testing.T) {
	m := NewMetrics(nil) // shared by the three nodes
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) { c.Metrics = m })
	l := cl.leader(10 * time.Second)
	n := cl.node(l)
	cur := cl.c.policy()
	// A transaction derived from a version the nodes do not hold, in an
	// entry naming the version they do hold (which derives no change).
	other := cl.withConfigSignatures(t, l, cl.c.cons.Next(t, cur, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 3 }))
	cl.proposeRefused(t, l, configEntryFor(t, n, other, cur))
	count := func(result string) float64 {
		var d dto.Metric
		if err := m.configBlocks.WithLabelValues(result).Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetCounter().GetValue()
	}
	if r, s := count("refused"), count("stored"); r != 3 || s != 0 {
		t.Fatalf("memberd_ledger_config_blocks_total refused %v stored %v, want 3 and 0 (one per node)", r, s)
	}
}

// TestConfigBlockConsenterBack: a consenter removed from ledger.consenters
// leaves the Orderer group in a CONFIG block; added back, it returns with
// its genesis consenter (TLS certificates) in a second one.
func TestConfigBlockConsenterBack(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) { c.ConfigBlocks = true })
	cl.leader(10 * time.Second)
	orderers := func() (orgs, consenters int) {
		ch := cl.node(1).ChannelConfig()
		return len(ch.Group.Groups["Orderer"].Groups), len(ch.Config.Consenters)
	}
	cl.setConsenters(t, "m1", "m2")
	cl.c.cur.Store(cl.withConfigSignatures(t, 1, cl.c.policy()))
	cl.reconcileAll()
	first := cl.waitLastConfig(15 * time.Second)
	if o, c := orderers(); o != 2 || c != 2 {
		t.Fatalf("after removing m3: %d orderer orgs, %d consenters in force, want 2 and 2", o, c)
	}
	cl.setConsenters(t, "m1", "m2", "m3")
	cl.c.cur.Store(cl.withConfigSignatures(t, 1, cl.c.policy()))
	cl.reconcileAll()
	deadline := time.Now().Add(15 * time.Second)
	for cl.node(1).LastConfig() == first || cl.node(2).LastConfig() == first || cl.node(3).LastConfig() == first {
		if time.Now().After(deadline) {
			t.Fatal("no second config block after adding m3 back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if o, c := orderers(); o != 3 || c != 3 {
		t.Fatalf("after adding m3 back: %d orderer orgs, %d consenters in force, want 3 and 3", o, c)
	}
	if seq := cl.node(1).ChannelConfig().Sequence; seq != 2 {
		t.Fatalf("sequence %d, want 2", seq)
	}
	cl.checkIdentical()
}

// TestConfigBlockFollowerWaitsForPolicy: a follower whose policy is still
// the version before the one a committed config entry names does not store
// the config block (nor anything after it) until its policy catches up,
// then stores it as the others did.
func TestConfigBlockFollowerWaitsForPolicy(t *testing.T) {
	var lagging atomic.Bool
	lagging.Store(true)
	var clp atomic.Pointer[cluster] // set once newCluster returns (New reads the policy)
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) {
		c.ConfigBlocks = true
		if c.Raft.ID == 3 {
			c.Policy = func() *policy.Policy {
				cl := clp.Load()
				switch {
				case cl == nil:
					return nil
				case lagging.Load():
					return cl.c.pol // the genesis version
				}
				return cl.c.policy()
			}
		}
	})
	clp.Store(cl)
	// Node 3 must not lead: it could not order the new version.
	if l := cl.leader(10 * time.Second); l == 3 {
		cl.stop(3)
		cl.leader(10 * time.Second)
		cl.start(3)
	}
	before := cl.node(1).Height()
	next := cl.c.cons.Next(t, cl.c.policy(), func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 3 })
	cl.c.cur.Store(cl.withConfigSignatures(t, 1, next))
	cl.reconcileAll()
	deadline := time.Now().Add(15 * time.Second)
	for cl.node(1).LastConfig() == 0 || cl.node(2).LastConfig() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("nodes 1 and 2 stored no config block")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if h, lc := cl.node(3).Height(), cl.node(3).LastConfig(); h != before || lc != 0 {
		t.Fatalf("node 3, with the older policy, has height %d (want %d) and last config %d (want 0)", h, before, lc)
	}
	lagging.Store(false)
	cl.waitHeight(before+1, 15*time.Second)
	if lc := cl.node(3).LastConfig(); lc != before {
		t.Fatalf("node 3: last config %d, want %d", lc, before)
	}
	cl.checkIdentical()
}

// TestConfigBlockUnverifiable: a follower that never held the policy
// version a committed config entry names (its policy went past it) cannot
// check the config block: it stops with ErrConfigUnverifiable instead of
// storing it or skipping it, and the others go on.
func TestConfigBlockUnverifiable(t *testing.T) {
	cl, skip := newSkippingCluster(t, nil)
	v2 := cl.c.cons.Next(t, cl.c.policy(), func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 3 })
	v3 := cl.c.cons.Next(t, v2, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 4 })
	skip.Store(v3)
	cl.c.cur.Store(cl.withConfigSignatures(t, 1, v2))
	cl.reconcileAll()
	tn := cl.nodes[2]
	select {
	case err := <-tn.runErr:
		if !errors.Is(err, ErrConfigUnverifiable) {
			t.Fatalf("node 3 Run: %v, want ErrConfigUnverifiable", err)
		}
		t.Log(err)
	case <-time.After(15 * time.Second):
		t.Fatal("node 3 did not stop")
	}
	if lc := tn.np.Load().LastConfig(); lc != 0 {
		t.Fatalf("node 3 put config block %d in force", lc)
	}
	tn.srv.Stop()
	tn.np.Load().Close()
	tn.np.Store(nil)
	cl.waitLastConfig(10 * time.Second) // nodes 1 and 2
}

// TestConfigBlockUnderSigned: a policy version whose ConfigUpdate too few
// admins signed is not ordered by the leader, and a config entry carrying
// it anyway (a faulty leader) is refused by every node.
func TestConfigBlockUnderSigned(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) { c.ConfigBlocks = true })
	l := cl.leader(10 * time.Second)
	n := cl.node(l)
	v2 := cl.c.cons.Next(t, cl.c.policy(), func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 3 })
	signed := cl.withConfigSignatures(t, l, v2).ConfigSignatures()
	v2 = v2.WithConfigSignature(signed[0]) // one admin of three
	cl.c.cur.Store(v2)
	cl.reconcileAll()
	time.Sleep(time.Second)
	if lc := n.LastConfig(); lc != 0 {
		t.Fatalf("the leader ordered config block %d for an under-signed version", lc)
	}
	u, err := n.nextConfig(v2)
	if err != nil {
		t.Fatal(err)
	}
	id := n.signing.Load()
	env, err := channelconfig.ConfigTransaction(u, nil, channelconfig.Signer{Key: id.signer, Identity: id.identity}, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := n.Store().LastHeader()
	data, err := encodeConfigEntry(block.New(h.Number+1, block.HeaderHash(h), [][]byte{env}), v2.Version(), v2.Hash())
	if err != nil {
		t.Fatal(err)
	}
	cl.proposeRefused(t, l, data)
}

// TestConfigBlockOlderThanMembership: both layers move forward together.
// Version 2 removes m3 from the consenters: raft drops it (the log records
// version 2) and a CONFIG block takes it out of the channel config. A
// config entry derived from version 1 after that (a leader whose policy
// folder lagged, here even with admin signatures on that update) would put
// m3 back into the channel config while raft goes on without it: every
// node refuses it, the config in force and the chain stay as they are.
func TestConfigBlockOlderThanMembership(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, func(c *Config) {
		c.ConfigBlocks = true
		liveMembership(c)
	})
	l := cl.leader(10 * time.Second)
	v1 := cl.c.policy()
	// Keep the leader: remove another node's member.
	drop := l%3 + 1
	keep, keepIDs := consentersWithout(3, drop)
	cl.c.cur.Store(cl.withConfigSignatures(t, l, cl.nextConsenters(t, keep...)))
	cl.reconcileAll()
	for _, id := range keepIDs {
		cl.waitVoters(id, keepIDs, 20*time.Second)
	}
	cl.stop(drop)
	first := cl.waitLastConfig(15 * time.Second)
	l = cl.leader(10 * time.Second)
	n := cl.node(l)
	if v := n.Raft().MembershipVersion(); v != 2 {
		t.Fatalf("membership version %d, want 2", v)
	}
	stale := cl.withConfigSignatures(t, l, v1) // the update from the config in force back to version 1
	h := n.Store().LastHeader()
	data := configEntryFor(t, n, stale, stale) // signed well enough to pass a stock peer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := n.raft.ProposeWait(ctx, data); err != nil {
		t.Fatal(err)
	}
	envs, ids := envelopes(t, cl.c.identity(t, "m1", "writer"), 1, 16)
	res := newLoadResult()
	if _, err := broadcast(ctx, cl.nodes[l-1].client, envs, ids, res); err != nil || len(res.success) != 1 {
		t.Fatalf("broadcast after the stale config block: %v %v", err, res.other)
	}
	cl.waitHeight(h.Number+2, 10*time.Second)
	cl.checkIdentical()
	for _, id := range keepIDs {
		nn := cl.node(id)
		if lc, cs := nn.LastConfig(), len(nn.ChannelConfig().Config.Consenters); lc != first || cs != 2 {
			t.Fatalf("node %d: last config %d with %d consenters, want %d with 2 (the stale config block was stored)", id, lc, cs, first)
		}
	}
}

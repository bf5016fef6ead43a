package consortium_test

// A signed policy version reaches the Fabric channel: the appliances order
// a CONFIG block that the stock Fabric tools read as they read a stock
// orderer's.

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/channelconfig/channelconfigtest"
	"github.com/memberd/memberd/policy"
)

// TestPolicyConfigBlock: on a running 3-member consortium with
// ledger.config_blocks, a pushed policy
// version that lowers ledger.batch_size.max_message_count to 2 becomes a
// CONFIG block of its own (sequence 1) on every member; 'peer channel fetch
// config' (which follows the newest block's LAST_CONFIG) returns exactly
// that block, configtxlator decodes it, configtxlator compute_update
// between the genesis config and the new one gives the LastUpdate memberd
// wrote, and every block after it holds at most 2 transactions. Before
// that, the same version signed by the policy quorum but by one channel
// admin of three changes neither layer on any member (issue #14: both
// layers or neither).
func TestPolicyConfigBlock(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-member consortium and the stock peer CLI")
	}
	fab := testenv.Fabric(t, "peer", "configtxlator")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	L, d := startConfigBlocks(t, ctx, 3)
	a := L.Members[0]
	// A stock peer of a follows the channel from the start.
	p := newStockPeer(t, fab, L, d, a, "peer0", a, false)
	p.start(t)
	p.join(t, ctx)
	if _, err := d.LedgerSubmit(ctx, a, 6); err != nil {
		t.Fatal(err)
	}
	before, err := d.LedgerHeight(a)
	if err != nil {
		t.Fatal(err)
	}

	// The admins sign v2 with 'memberd policy sign'; with --config-block
	// (here the genesis block) an admin also signs the ConfigUpdate that v2
	// derives from the config in force, with a Fabric admin certificate for
	// the same key (OU=admin, made with 'memberd hsm csr' and 'memberd ca
	// sign'). First a signs both halves and b the policy only: the policy
	// has its quorum (2 of 3), the channel update has 1 admin of 3.
	unsigned := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) { doc.Ledger.BatchSize.MaxMessageCount = 2 })
	bundle := filepath.Join(t.TempDir(), "v2.yaml")
	if err := os.WriteFile(bundle, unsigned.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	genesisBlock := filepath.Join(L.Dir, "members", a, "genesis.block")
	sign := func(m string, configBlock bool) {
		if configBlock {
			signBoth(t, L, bundle, m, genesisBlock)
		} else {
			signBoth(t, L, bundle, m, "")
		}
	}
	// 'policy verify --config-block' checks both halves.
	verify := func() (int, string) {
		code, out, errb := runMemberd(t, "policy", "verify", "--current", filepath.Join(L.Dir, "genesis.yaml"),
			"--config-block", filepath.Join(L.Dir, "members", a, "genesis.block"), bundle)
		return code, out + errb
	}
	readBundle := func() *policy.Policy {
		raw, err := os.ReadFile(bundle)
		if err != nil {
			t.Fatal(err)
		}
		v, err := policy.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	sign(L.Members[0], true)
	if code, out := verify(); code != exitRuntime || !strings.Contains(out, "update to config sequence 1 REFUSED") {
		t.Fatalf("policy verify after one signature: exit %d:\n%s", code, out)
	}
	sign(L.Members[1], false)
	code, out := verify()
	if code != exitRuntime || !strings.Contains(out, "update to config sequence 1 REFUSED") {
		t.Fatalf("policy verify --config-block with one channel admin: exit %d, want the channel REFUSED:\n%s", code, out)
	}
	t.Logf("policy verify --config-block of the under-signed v2:\n%s", out)
	if code, pout, perr := runMemberd(t, "policy", "verify", "--current", filepath.Join(L.Dir, "genesis.yaml"), bundle); code != 0 {
		t.Fatalf("policy verify without --config-block: exit %d, want the policy half OK (2 of 3 admins):\n%s%s", code, pout, perr)
	}

	// Pushed, the under-signed v2 changes neither layer on any member: the
	// policy stays at version 1 (tunnel, ACL, relays) and no CONFIG block
	// is cut; each member counts it as a config_update rejection. The
	// relays learn versions from their members, so they stay at 1 too.
	under := readBundle()
	res, err := d.PushPolicy(ctx, a, under.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	// The pusher hears each member's refusal and its reason.
	for _, r := range res {
		if r.OK || !strings.Contains(r.Detail, policy.ReasonConfigUpdate) {
			t.Fatalf("push of the under-signed v2 to %s: ok=%v %s, want it refused for %s", r.Member, r.OK, r.Detail, policy.ReasonConfigUpdate)
		}
	}
	waitFor(t, 30*time.Second, "every member to reject the under-signed v2 with reason config_update", func() bool {
		for _, m := range L.Members {
			if policyRejected(t, d, m, policy.ReasonConfigUpdate) < 1 {
				return false
			}
		}
		return true
	})
	for _, m := range L.Members {
		if v := d.PolicyVersion(m); v != 1 {
			t.Fatalf("%s applied policy version %d from an under-signed bundle, want 1", m, v)
		}
	}
	for _, r := range L.Relays {
		if v := d.RelayPolicyVersion(r); v != 1 {
			t.Fatalf("relay %s at policy version %d, want 1", r, v)
		}
	}
	if h, err := d.LedgerHeight(a); err != nil || h > before {
		for n := before; err == nil && n < h; n++ {
			if b, _, err := d.LedgerBlock(ctx, a, n); err == nil && channelconfig.IsConfigBlock(b) {
				t.Fatalf("block %d is a CONFIG block of the under-signed v2", n)
			}
		}
	}

	// A third admin signs both halves: 2 of 3 channel admins, 3 of 3
	// policy admins; applied to both layers.
	sign(L.Members[2], true)
	if code, out := verify(); code != 0 || !strings.Contains(out, "update to config sequence 1 OK") || !strings.Contains(out, "admin signatures: 2") {
		t.Fatalf("policy verify after the third signature: exit %d:\n%s", code, out)
	}
	v2 := readBundle()
	if n := len(v2.ConfigSignatures()); n != 2 || v2.Hash() != under.Hash() {
		t.Fatalf("%d config signatures in the bundle, want 2, on the same version", n)
	}
	res, err = d.PushPolicy(ctx, a, v2.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.OK || !strings.Contains(r.Detail, "applied: version 2") {
			t.Fatalf("push of v2 to %s: ok=%v %s, want applied", r.Member, r.OK, r.Detail)
		}
	}
	if err := d.DropRelayPolicy(v2.Marshal()); err != nil {
		t.Fatal(err)
	}
	// The config block follows the blocks submitted before, on every member.
	cfgNum, _ := waitConfigBlock(t, ctx, d, L.Members, before)
	var cfgBlock *common.Block
	for _, m := range L.Members {
		b, _, err := d.LedgerBlock(ctx, m, cfgNum)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := channelconfig.BlockConfig(b); err != nil {
			t.Fatalf("%s: block %d is not the CONFIG block: %v", m, cfgNum, err)
		}
		if lc, err := block.LastConfigIndex(b); err != nil || lc != cfgNum {
			t.Fatalf("%s: config block %d: LAST_CONFIG %d (%v), want itself", m, cfgNum, lc, err)
		}
		if cfgBlock == nil {
			cfgBlock = b
		} else if !bytes.Equal(block.HeaderHash(b.Header), block.HeaderHash(cfgBlock.Header)) {
			t.Fatalf("%s: config block differs from %s's", m, a)
		}
	}
	// 'memberd policy log' on every member: v2 in force, with the three
	// votes and the two channel admins who signed.
	for _, m := range L.Members {
		state := filepath.Join(L.Dir, "members", m, "state")
		code, out, errb := runMemberd(t, "policy", "log", "--state", state)
		if code != 0 {
			t.Fatalf("%s: policy log: exit %d: %s", m, code, errb)
		}
		sigs := strings.Join([]string{L.Members[0] + "/a1", L.Members[1] + "/a1", L.Members[2] + "/a1"}, ",")
		cfgs := L.Members[0] + "/a1," + L.Members[2] + "/a1"
		if !regexp.MustCompile(`(?m)^2 \*\s.*ledger_changed\s+` + regexp.QuoteMeta(sigs) + `\s+` + regexp.QuoteMeta(cfgs) + `\s+-\s*$`).MatchString(out) {
			t.Fatalf("%s: policy log lacks v2 in force with votes %s and channel signatures %s:\n%s", m, sigs, cfgs, out)
		}
		if m == a {
			t.Logf("memberd policy log --state %s:\n%s", state, out)
		}
	}
	ce, cue, err := channelconfig.ConfigTransactionOf(cfgBlock)
	if err != nil {
		t.Fatal(err)
	}
	if ce.Config.Sequence != 1 {
		t.Fatalf("config sequence %d, want 1", ce.Config.Sequence)
	}

	// The new batch size cuts every block after it.
	if _, err := d.LedgerSubmit(ctx, a, 9); err != nil {
		t.Fatal(err)
	}
	// The SUCCESS answers come from the leader; wait until every member
	// stores the same height.
	height := sameHeight(t, d, L.Members, 20*time.Second)
	sizes := []int{}
	for n := cfgNum + 1; n < height; n++ {
		b, _, err := d.LedgerBlock(ctx, a, n)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(b.Data.Data))
		lc, err := block.LastConfigIndex(b)
		if err != nil || lc != cfgNum || len(b.Data.Data) > 2 {
			t.Fatalf("block %d: %d envelopes, LAST_CONFIG %d (%v); want at most 2 and %d", n, len(b.Data.Data), lc, err, cfgNum)
		}
	}
	t.Logf("config block %d; blocks after it hold %v envelopes", cfgNum, sizes)

	// The stock peer validates the CONFIG block (the admins' signatures
	// meet its mod_policy) and commits it and every block after it.
	p.committedAll(t, ctx, height)
	t.Logf("stock peer committed all %d blocks, the CONFIG block %d among them", height, cfgNum)

	// The stock peer CLI fetches the config block through LAST_CONFIG.
	fetched := filepath.Join(p.dir, "config.block")
	p.cli(t, ctx, p.clientEnv(), "channel", "fetch", "config", fetched, "-c", "demo", "-o", d.LedgerAddr(a),
		"--tls", "--cafile", filepath.Join(L.Dir, "members", a, "ca.pem"))
	// 'memberd policy log --config-block' names the block of v2.
	lcode, lout, lerr := runMemberd(t, "policy", "log", "--state", filepath.Join(L.Dir, "members", a, "state"), "--config-block", fetched)
	if lcode != 0 || !regexp.MustCompile(`(?m)^2 \*\s.*\s`+strconv.FormatUint(cfgNum, 10)+`\s*$`).MatchString(lout) {
		t.Fatalf("policy log --config-block: exit %d, want v2 with config block %d:\n%s%s", lcode, cfgNum, lout, lerr)
	}
	t.Logf("memberd policy log --config-block (from peer channel fetch config):\n%s", lout)
	raw, err := os.ReadFile(fetched)
	if err != nil {
		t.Fatal(err)
	}
	got, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got.Header.Number != cfgNum || !bytes.Equal(block.HeaderHash(got.Header), block.HeaderHash(cfgBlock.Header)) {
		t.Fatalf("peer channel fetch config returned block %d, want the config block %d", got.Header.Number, cfgNum)
	}
	lator := filepath.Join(fab, "bin", "configtxlator")
	js, err := exec.CommandContext(ctx, lator, "proto_decode", "--type", "common.Block", "--input", fetched).Output()
	if err != nil {
		t.Fatalf("configtxlator proto_decode: %v", err)
	}
	if !strings.Contains(string(js), `"max_message_count": 2`) {
		t.Fatalf("configtxlator proto_decode of the config block shows no max_message_count 2:\n%s", lastLines(string(js), 20))
	}

	// compute_update between the two configs is memberd's LastUpdate.
	gen, _, err := d.LedgerBlock(ctx, a, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, oldCfg, err := channelconfig.BlockConfig(gen)
	if err != nil {
		t.Fatal(err)
	}
	want, mine := channelconfigtest.ComputeUpdate(t, "demo", oldCfg, ce.Config), new(common.ConfigUpdate)
	if err := proto.Unmarshal(cue.ConfigUpdate, mine); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(want, mine) {
		t.Fatalf("LastUpdate differs from configtxlator compute_update:\nmemberd:       %v\nconfigtxlator: %v", mine, want)
	}

	// peer channel update (the same delta, signed by a's admin) is refused
	// with the way to change the channel.
	chdr, err := proto.Marshal(&common.ChannelHeader{Type: int32(common.HeaderType_CONFIG_UPDATE), ChannelId: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	draw, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	cuEnv, err := proto.Marshal(&common.ConfigUpdateEnvelope{ConfigUpdate: draw})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := proto.Marshal(&common.Payload{Header: &common.Header{ChannelHeader: chdr}, Data: cuEnv})
	if err != nil {
		t.Fatal(err)
	}
	out, err = p.try(ctx, p.clientEnv(), "channel", "update", "-f", channelconfigtest.WriteProto(t, t.TempDir(), "update.tx", &common.Envelope{Payload: payload}), "-c", "demo",
		"-o", d.LedgerAddr(a), "--tls", "--cafile", filepath.Join(L.Dir, "members", a, "ca.pem"))
	if err == nil || !strings.Contains(out, "FORBIDDEN") || !strings.Contains(out, "memberd policy sign") {
		t.Fatalf("peer channel update: %v, want FORBIDDEN naming memberd policy sign:\n%s", err, lastLines(out, 5))
	}
	t.Logf("peer channel update refused: %s", lastLines(out, 1))
	if h, err := d.LedgerHeight(a); err != nil || h != height {
		t.Fatalf("height %d after the refused update (%v), want %d", h, err, height)
	}
}

// startConfigBlocks runs a consortium of n members with
// ledger.config_blocks on, its ledger up.
func startConfigBlocks(t *testing.T, ctx context.Context, n int) (*demo.Layout, *demo.Consortium) {
	t.Helper()
	L := initConsortium(t, n, 1)
	for _, m := range L.Members {
		editMemberConfig(t, L, m, func(c map[string]any) { c["ledger"].(map[string]any)["config_blocks"] = true })
	}
	d := start(t, L, nil)
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	return L, d
}

// waitConfigBlock waits for the first CONFIG block at or after height from
// on members[0], then for every member to store it; it returns its number
// and members[0]'s copy. (members[0]'s store may still lag the blocks its
// SUCCESS answers came from: they were forwarded to the leader.)
func waitConfigBlock(t *testing.T, ctx context.Context, d *demo.Consortium, members []string, from uint64) (uint64, *common.Block) {
	t.Helper()
	var cfgNum uint64
	var cfgBlk *common.Block
	next := from
	waitFor(t, 30*time.Second, "the CONFIG block", func() bool {
		h, err := d.LedgerHeight(members[0])
		for ; err == nil && next < h; next++ {
			b, _, err := d.LedgerBlock(ctx, members[0], next)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := channelconfig.BlockConfig(b); err == nil {
				cfgNum, cfgBlk = next, b
				return true
			}
		}
		return false
	})
	waitFor(t, 30*time.Second, "the CONFIG block on every member", func() bool {
		for _, m := range members {
			if h, err := d.LedgerHeight(m); err != nil || h <= cfgNum {
				return false
			}
		}
		return true
	})
	return cfgNum, cfgBlk
}

// policyRejected reads member m's policy_rejected_total{reason} from its
// admin endpoint (0 when absent or unreadable).
func policyRejected(t *testing.T, d *demo.Consortium, m, reason string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.AdminAddr(m) + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0
	}
	re := regexp.MustCompile(`(?m)^policy_rejected_total\{reason="` + regexp.QuoteMeta(reason) + `"\} (\S+)$`)
	mm := re.FindSubmatch(body)
	if mm == nil {
		return 0
	}
	f, err := strconv.ParseFloat(string(mm[1]), 64)
	if err != nil {
		return 0
	}
	return f
}

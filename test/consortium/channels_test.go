package consortium_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/policy"
)

// TestTwoChannels: a consortium of three members whose policy lists two
// channels (ledger.channels): alpha, of all three and ordered by all
// three, and beta, of member-b and member-c only, ordered by both; both
// cut a block per transaction. Each channel has its own raft group on the
// one raft port: alpha's leader is moved to member-a, which is not even in
// beta, and stopping member-a makes alpha elect another leader while beta
// keeps its leader and term. Both channels take load throughout, reach
// different heights, and every transaction answered SUCCESS is in its own
// channel's chain on each of the channel's members and in no other; a
// member outside beta can neither broadcast to nor read beta.
func TestTwoChannels(t *testing.T) {
	ctx, _, d := startTwoChannels(t)
	a, b, c := memberA, memberB, memberC
	if _, err := d.LedgerChannelNode(a, "beta"); err == nil {
		t.Fatalf("%s opened beta, which it does not order", a)
	}
	for _, m := range []string{b, c} {
		if _, err := d.LedgerChannelNode(m, "beta"); err != nil {
			t.Fatal(err)
		}
	}

	// alpha's leader becomes member-a; beta's is one of b and c.
	moveLeader(t, ctx, d, "alpha", []string{a, b, c}, a)
	alphaLeader, _ := leaderOf(t, d, "alpha", []string{a, b, c})
	betaLeader, betaTerm := leaderOf(t, d, "beta", []string{b, c})
	if alphaLeader != a || betaLeader == a || betaLeader == "" {
		t.Fatalf("leaders: alpha %q, beta %q", alphaLeader, betaLeader)
	}
	t.Logf("leaders: alpha %s, beta %s (term %d)", alphaLeader, betaLeader, betaTerm)

	txs := map[string][]string{}
	submit := func(as, at, ch string, n int) {
		t.Helper()
		ids, err := d.LedgerSubmitAs(ctx, as, at, ch, n)
		if err != nil {
			t.Fatalf("submit %d to %s at %s: %v", n, ch, at, err)
		}
		txs[ch] = append(txs[ch], ids...)
	}
	submit(a, a, "alpha", 4)
	submit(b, b, "beta", 3)
	submit(c, c, "beta", 2)
	submit(c, b, "alpha", 2) // at a follower: forwarded to alpha's leader, member-a

	// A member outside beta is refused there, even at a node that orders
	// beta; member-a does not serve beta at all.
	if _, err := d.LedgerSubmitAs(ctx, a, b, "beta", 1); !errors.Is(err, orderer.ErrStatus) || !strings.Contains(err.Error(), "FORBIDDEN") {
		t.Fatalf("member-a's broadcast to beta at member-b: %v, want FORBIDDEN", err)
	}
	if _, _, err := d.LedgerFetchAs(ctx, a, c, "beta", 1); err == nil || !strings.Contains(err.Error(), "FORBIDDEN") {
		t.Fatalf("member-a's Deliver on beta at member-c: %v, want FORBIDDEN", err)
	}
	if _, err := d.LedgerSubmitAs(ctx, a, a, "beta", 1); err == nil {
		t.Fatal("member-a's ledger accepted a transaction for beta, which it does not order")
	}

	// Stopping alpha's leader moves alpha's leadership only.
	if err := d.StopMember(a); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "alpha elects a leader among b and c", func() bool {
		l, _ := leaderOf(t, d, "alpha", []string{b, c})
		return l == b || l == c
	})
	if l, term := leaderOf(t, d, "beta", []string{b, c}); l != betaLeader || term != betaTerm {
		t.Fatalf("beta's leader moved with alpha's: %s term %d, was %s term %d", l, term, betaLeader, betaTerm)
	}
	submit(b, b, "alpha", 3)
	submit(c, c, "beta", 2)
	if err := d.StartMember(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}

	heights := map[string]uint64{}
	for ch, members := range map[string][]string{"alpha": {a, b, c}, "beta": {b, c}} {
		var h uint64
		for _, m := range members {
			n, err := d.LedgerChannelNode(m, ch)
			if err != nil {
				t.Fatal(err)
			}
			h = max(h, n.Height())
		}
		heights[ch] = h
		var ref [][]byte
		for _, m := range members {
			hashes, got, err := d.LedgerFetchFrom(ctx, m, ch, h)
			if err != nil {
				t.Fatalf("fetch %s from %s: %v", ch, m, err)
			}
			for _, id := range txs[ch] {
				if !got[id] {
					t.Errorf("%s: tx %s answered SUCCESS on %s is not in %s's blocks 1..%d", m, id, ch, ch, h-1)
				}
			}
			for other, ids := range txs {
				for _, id := range ids {
					if other != ch && got[id] {
						t.Errorf("%s: tx %s of %s is in %s", m, id, other, ch)
					}
				}
			}
			if ref == nil {
				ref = hashes
			} else if !slices.EqualFunc(ref, hashes, func(x, y []byte) bool { return string(x) == string(y) }) {
				t.Errorf("%s: %s's blocks differ from %s's", ch, m, members[0])
			}
		}
	}
	t.Logf("heights: alpha %d (%d transactions), beta %d (%d)", heights["alpha"], len(txs["alpha"]), heights["beta"], len(txs["beta"]))
	for ch, h := range heights {
		if h != uint64(len(txs[ch])+1) {
			t.Errorf("%s: height %d, want %d (genesis and one block per transaction)", ch, h, len(txs[ch])+1)
		}
	}
	if heights["alpha"] == heights["beta"] {
		t.Fatal("the channels have the same height")
	}
}

// The members of startTwoChannels' consortium.
const memberA, memberB, memberC = "member-a", "member-b", "member-c"

// startTwoChannels starts three members whose policy lists alpha (all
// three, ordered by all three) and beta (member-b and member-c, ordered by
// both), each cutting a block per transaction (the demo ledger's default
// is 500), so each channel's height is exactly its transactions plus
// genesis. The test is skipped with -short, and ctx ends after 3 minutes;
// edit, if given, changes each member's memberd.yaml before the start.
func startTwoChannels(t *testing.T, edit ...func(cfg map[string]any)) (context.Context, *demo.Layout, *demo.Consortium) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a 3-member consortium")
	}
	testenv.SoftHSMModule(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	a, b, c := memberA, memberB, memberC
	perTx := &policy.BatchSize{MaxMessageCount: 1, AbsoluteMaxBytes: 1 << 20, PreferredMaxBytes: 1 << 20}
	L, err := demo.Init(demo.Options{Dir: t.TempDir(), Members: 3, Relays: 1, HSM: "softhsm", Channels: []*policy.Channel{
		{Name: "alpha", Consenters: []string{a, b, c}, BatchSize: perTx},
		{Name: "beta", Consenters: []string{b, c}, Members: []string{b, c}, BatchSize: perTx},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", L.SoftHSMConf)
	for _, e := range edit {
		for _, m := range L.Members {
			editMemberConfig(t, L, m, e)
		}
	}
	d := start(t, L, nil)
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx, L, d
}

// TestStockPeerOnSecondChannel: a stock Fabric peer of member-b joins
// beta, the second channel of TestTwoChannels' consortium, with beta's
// genesis block, and commits every block of beta that member-b's and
// member-c's nodes cut (signed by beta's consenters, checked against
// beta's config), while alpha takes load beside it.
func TestStockPeerOnSecondChannel(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-member consortium and a stock peer")
	}
	fab := testenv.Fabric(t, "peer")
	ctx, L, d := startTwoChannels(t)
	a, b, c := memberA, memberB, memberC
	p := newStockPeer(t, fab, L, d, b, "peer0", b, false)
	p.channel = "beta"
	p.start(t)
	p.join(t, ctx)
	for _, x := range []struct{ at, ch string }{{b, "beta"}, {a, "alpha"}, {c, "beta"}, {c, "alpha"}} {
		if _, err := d.LedgerSubmitTo(ctx, x.at, x.ch, 2); err != nil {
			t.Fatal(err)
		}
	}
	n, err := d.LedgerChannelNode(b, "beta")
	if err != nil {
		t.Fatal(err)
	}
	if h := n.Height(); h != 5 {
		t.Fatalf("beta height %d, want 5", h)
	}
	p.committedAll(t, ctx, 5)
	if out, err := p.try(ctx, p.clientEnv(), "channel", "getinfo", "-c", "alpha"); err == nil {
		t.Fatalf("the peer, which joined beta only, has alpha:\n%s", out)
	}
}

// TestChannelConsenterChange: a pushed policy version that drops member-c
// from beta's consenters (it stays a member of beta) changes beta's raft
// group alone: member-c's beta node says it was removed and beta orders on
// member-b, while alpha keeps its three voters and member-c keeps ordering
// alpha.
func TestChannelConsenterChange(t *testing.T) {
	ctx, L, d := startTwoChannels(t)
	_, b, c := memberA, memberB, memberC
	if _, err := d.LedgerSubmitTo(ctx, c, "beta", 2); err != nil {
		t.Fatal(err)
	}
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) { doc.Ledger.Channels[1].Consenters = []string{b} }, L.Members...)
	if df := policy.Compare(L.Genesis, v2); !df.Has(policy.KindConsentersChanged) || !slices.Equal(df.ChannelConsenters, []string{"beta: -" + c}) {
		t.Fatalf("diff of v2: kinds %v, channel consenters %v", df.Kinds, df.ChannelConsenters)
	}
	res, err := d.PushPolicy(ctx, b, v2.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.OK {
			t.Fatalf("push of v2 to %s: %s", r.Member, r.Detail)
		}
	}
	voters := func(m, ch string) int {
		n, err := d.LedgerChannelNode(m, ch)
		if err != nil {
			t.Fatal(err)
		}
		return len(n.Raft().Status().Voters)
	}
	waitFor(t, 30*time.Second, "beta down to one voter with "+c+" removed", func() bool {
		n, err := d.LedgerChannelNode(c, "beta")
		if err != nil {
			t.Fatal(err)
		}
		return voters(b, "beta") == 1 && errors.Is(n.Healthy(), orderer.ErrRemoved)
	})
	for _, m := range []string{memberA, b, c} {
		if v := voters(m, "alpha"); v != 3 {
			t.Fatalf("alpha on %s has %d voters after beta's change, want 3", m, v)
		}
		n, err := d.LedgerChannelNode(m, "alpha")
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Healthy(); err != nil {
			t.Fatalf("alpha on %s: %v", m, err)
		}
	}
	// Both channels order on: beta at member-b alone, alpha with member-c.
	waitFor(t, 30*time.Second, "beta orders at "+b, func() bool {
		_, err := d.LedgerSubmitTo(ctx, b, "beta", 1)
		return err == nil
	})
	if _, err := d.LedgerSubmitTo(ctx, c, "alpha", 2); err != nil {
		t.Fatal(err)
	}
}

// TestChannelConfigBlock: with ledger.config_blocks, a version that changes
// beta's batch size, signed by the admins of beta's two orgs on beta's
// ConfigUpdate ('memberd policy sign --config-block' with beta's genesis
// block), becomes a CONFIG block of beta on member-b and member-c, whose
// batch size then applies there; alpha, whose config the version does not
// change, gets no CONFIG block on any of its three members.
func TestChannelConfigBlock(t *testing.T) {
	ctx, L, d := startTwoChannels(t, func(cfg map[string]any) { cfg["ledger"].(map[string]any)["config_blocks"] = true })
	a, b, c := memberA, memberB, memberC
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) {
		doc.Ledger.Channels[1].BatchSize = &policy.BatchSize{MaxMessageCount: 3, AbsoluteMaxBytes: 1 << 20, PreferredMaxBytes: 1 << 20}
	})
	bundle := filepath.Join(t.TempDir(), "v2.yaml")
	if err := os.WriteFile(bundle, v2.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{b, c} {
		signBoth(t, L, bundle, m, filepath.Join(L.Dir, "members", m, demo.LedgerChannelGenesisFile("beta")))
	}
	signed, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.PushPolicy(ctx, b, signed)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.OK {
			t.Fatalf("push of v2 to %s: %s", r.Member, r.Detail)
		}
	}
	node := func(m, ch string) *orderer.Node {
		n, err := d.LedgerChannelNode(m, ch)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, 30*time.Second, "beta's CONFIG block on member-b and member-c", func() bool {
		return node(b, "beta").LastConfig() > 0 && node(c, "beta").LastConfig() > 0
	})
	for _, m := range []string{b, c} {
		if got := node(m, "beta").BatchConfig().MaxMessageCount; got != 3 {
			t.Fatalf("beta on %s: max_message_count %d after its CONFIG block, want 3", m, got)
		}
	}
	if _, err := d.LedgerSubmitTo(ctx, c, "alpha", 1); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{a, b, c} {
		if n := node(m, "alpha"); n.LastConfig() != 0 || n.BatchConfig().MaxMessageCount != 1 || n.Policy().Version() != 2 {
			t.Fatalf("alpha on %s: last config %d, max_message_count %d, policy version %d; want 0, 1, 2",
				m, n.LastConfig(), n.BatchConfig().MaxMessageCount, n.Policy().Version())
		}
	}
	t.Logf("beta's CONFIG block: %d; alpha height %d", node(b, "beta").LastConfig(), node(a, "alpha").Height())
}

// leaderOf is the member leading channel and its term, as the first of
// members that runs and knows a leader reports ("" when none does).
func leaderOf(t *testing.T, d *demo.Consortium, channel string, members []string) (string, uint64) {
	t.Helper()
	for _, m := range members {
		n, err := d.LedgerChannelNode(m, channel)
		if err != nil {
			continue
		}
		st := n.Raft().Status()
		for _, p := range st.Members {
			if p.ID == st.Leader && st.Leader != 0 {
				return p.Name, st.Term
			}
		}
	}
	return "", 0
}

// moveLeader makes to the raft leader of channel (leadership transfer from
// the current leader).
func moveLeader(t *testing.T, ctx context.Context, d *demo.Consortium, channel string, members []string, to string) {
	t.Helper()
	waitFor(t, 30*time.Second, channel+" leader is "+to, func() bool {
		cur, _ := leaderOf(t, d, channel, members)
		if cur == to {
			return true
		}
		if cur == "" {
			return false
		}
		from, err := d.LedgerChannelNode(cur, channel)
		if err != nil {
			return false
		}
		target, err := d.LedgerChannelNode(to, channel)
		if err != nil {
			t.Fatal(err)
		}
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := from.Raft().TransferLeadership(tctx, target.Raft().ID()); err != nil {
			t.Logf("transfer %s leadership %s -> %s: %v", channel, cur, to, err)
		}
		return false
	})
}

package consortium_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// signBoth has member m's admin sign bundle with 'memberd policy sign':
// its vote, and with configBlock (the channel's last config block) also the
// ConfigUpdate the version derives from it, with a Fabric admin certificate
// for the same key (OU=admin, made with 'memberd hsm csr' and 'memberd ca
// sign').
func signBoth(t *testing.T, L *demo.Layout, bundle, m, configBlock string) {
	t.Helper()
	args := []string{"policy", "sign", "--key", "file:" + L.AdminKey[m], "--insecure-file-key", "--member", m, "--key-id", "a1"}
	if configBlock != "" {
		mdir := filepath.Join(L.Dir, "members", m)
		certDir := t.TempDir()
		memberd(t, "hsm", "csr", "--key", "file:"+L.AdminKey[m], "--insecure-file-key", "--cn", "admin."+m, "--org", m,
			"--ou", "admin", "--out", filepath.Join(certDir, "admin.csr"))
		memberd(t, "ca", "sign", "--key", "file:"+filepath.Join(mdir, "ca-key.pem"), "--insecure-file-key",
			"--ca-cert", filepath.Join(mdir, "ca.pem"), "--csr", filepath.Join(certDir, "admin.csr"), "--out", filepath.Join(certDir, "admin.pem"))
		args = append(args, "--config-block", configBlock, "--admin-cert", filepath.Join(certDir, "admin.pem"))
	}
	memberd(t, append(args, bundle)...)
}

// TestPolicyConfigBlockConsenter: with ledger.config_blocks on 4 members, a
// version removes member d from the consenters (a CONFIG block drops its
// orderer org), and the next adds it back with its consenter entry in the
// policy (members[].ledger_consenter): the admins can sign that version's
// ConfigUpdate ('policy sign --config-block' derives it from the policy
// alone), every member orders the same CONFIG block, d's consenter in it
// is byte for byte its genesis entry, d (not a consenter of the version in
// force, so it accepts on the votes) catches up, and a stock peer commits
// every block.
func TestPolicyConfigBlockConsenter(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 4-member consortium and the stock peer CLI")
	}
	fab := testenv.Fabric(t, "peer")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	L, d := startConfigBlocks(t, ctx, 4)
	a, dm := L.Members[0], L.Members[3]
	p := newStockPeer(t, fab, L, d, a, "peer0", a, false)
	p.start(t)
	p.join(t, ctx)
	if _, err := d.LedgerSubmit(ctx, a, 3); err != nil {
		t.Fatal(err)
	}
	push := newConfigPusher(t, ctx, L, d).push
	setRoles := func(doc *policy.Document, ids []string) {
		doc.Ledger.Consenters = ids
		for _, m := range doc.Members {
			m.Roles = slices.DeleteFunc(m.Roles, func(r policy.Role) bool { return r == policy.RoleConsenter })
			if slices.Contains(ids, m.ID) {
				m.Roles = append(m.Roles, policy.RoleConsenter)
			}
		}
	}

	// v2: d is no consenter any more.
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) { setRoles(doc, L.Members[:3]) })
	c2 := push(v2, L.Members[:3])
	ch2, err := channelconfig.Parse(c2)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ch2.Config.Consenters); n != 3 {
		t.Fatalf("%d consenters after v2, want 3", n)
	}

	// v3: d is back, its consenter entry in the policy: its ledger TLS
	// certificate (the appliance identity) and gRPC port.
	certPEM, err := os.ReadFile(filepath.Join(L.Dir, "members", dm, "identity", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	gen, _, err := d.LedgerBlock(ctx, a, 0)
	if err != nil {
		t.Fatal(err)
	}
	chg, err := channelconfig.Parse(gen)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(chg.Config.Consenters, func(c channelconfig.Consenter) bool { return bytes.Equal(c.ClientTLSCert, certPEM) })
	if i < 0 {
		t.Fatalf("%s's certificate is not a genesis consenter", dm)
	}
	genesisEntry := chg.Config.Consenters[i]
	v3 := nextPolicy(t, L, v2, func(doc *policy.Document) {
		setRoles(doc, L.Members)
		for _, m := range doc.Members {
			if m.ID == dm {
				m.LedgerConsenter = &policy.LedgerConsenter{TLSCert: string(certPEM), Port: uint16(genesisEntry.Port)}
			}
		}
	})
	c3 := push(v3, L.Members)
	ch3, err := channelconfig.Parse(c3)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ch3.Config.Consenters); n != 4 {
		t.Fatalf("%d consenters after v3, want 4", n)
	}
	got := ch3.Config.Consenters[3]
	if got.Host != genesisEntry.Host || got.Port != genesisEntry.Port || !bytes.Equal(got.ClientTLSCert, genesisEntry.ClientTLSCert) || !bytes.Equal(got.ServerTLSCert, genesisEntry.ServerTLSCert) {
		t.Fatalf("%s's consenter from the policy %s:%d differs from its genesis entry %s:%d", dm, got.Host, got.Port, genesisEntry.Host, genesisEntry.Port)
	}
	t.Logf("config blocks %d (without %s) and %d (with it, from members[].ledger_consenter)", c2.Header.Number, dm, c3.Header.Number)

	// The ledger goes on with d; the stock peer commits every block, both
	// CONFIG blocks among them.
	if _, err := d.LedgerSubmit(ctx, dm, 3); err != nil {
		t.Fatal(err)
	}
	height := sameHeight(t, d, L.Members, 60*time.Second)
	p.committedAll(t, ctx, height)
	t.Logf("stock peer committed all %d blocks", height)
}

// sameHeight waits until every member stores the same height and returns it.
func sameHeight(t *testing.T, d *demo.Consortium, members []string, within time.Duration) uint64 {
	t.Helper()
	var height uint64
	waitFor(t, within, "every member at the same height", func() bool {
		hs := map[uint64]bool{}
		for _, m := range members {
			h, err := d.LedgerHeight(m)
			if err != nil {
				return false
			}
			hs[h], height = true, h
		}
		return len(hs) == 1
	})
	return height
}

// committedAll waits until the stock peer has height blocks and checks it
// committed each of them and refused nothing (CONFIG blocks included).
func (p *stockPeer) committedAll(t *testing.T, ctx context.Context, height uint64) {
	t.Helper()
	p.waitHeight(t, ctx, height)
	log := p.log(t)
	for _, bad := range append(peerRefusals, "error validating", "policy for [") {
		if strings.Contains(log, bad) {
			t.Fatalf("stock peer logged %q:\n%s", bad, grepLines(log, bad))
		}
	}
	if committed := len(regexp.MustCompile(`Committed block \[\d+\]`).FindAllString(log, -1)); committed != int(height) {
		t.Fatalf("stock peer committed %d blocks, want %d", committed, height)
	}
}

// configPusher has every admin of L.Members sign policy versions, both
// halves ('memberd policy sign --config-block', against the channel's last
// config block), pushes them and waits for their CONFIG blocks.
type configPusher struct {
	t          *testing.T
	ctx        context.Context
	L          *demo.Layout
	d          *demo.Consortium
	dir        string
	lastConfig string // the file of the channel's last config block
}

func newConfigPusher(t *testing.T, ctx context.Context, L *demo.Layout, d *demo.Consortium) *configPusher {
	return &configPusher{t: t, ctx: ctx, L: L, d: d, dir: t.TempDir(), lastConfig: filepath.Join(L.Dir, "members", L.Members[0], "genesis.block")}
}

// push signs next by every admin of L.Members against the last config
// block, pushes it through L.Members[0] and waits until every member
// applied it and the members of want store the same CONFIG block of it;
// it returns that block (and keeps it as the last config block).
func (c *configPusher) push(next *policy.Policy, want []string) *common.Block {
	t, ctx, L, d := c.t, c.ctx, c.L, c.d
	t.Helper()
	a := L.Members[0]
	bundle := filepath.Join(c.dir, "v"+strconv.FormatUint(next.Version(), 10)+".yaml")
	if err := os.WriteFile(bundle, next.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range L.Members {
		signBoth(t, L, bundle, m, c.lastConfig)
	}
	raw, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.PushPolicy(ctx, a, raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.OK {
			t.Fatalf("push of v%d to %s: %s", next.Version(), r.Member, r.Detail)
		}
	}
	waitFor(t, 60*time.Second, "every member at policy version "+strconv.FormatUint(next.Version(), 10), func() bool {
		for _, m := range L.Members {
			if d.PolicyVersion(m) != next.Version() {
				return false
			}
		}
		return true
	})
	var cfg *common.Block
	waitFor(t, 60*time.Second, "the CONFIG block of the new version on "+strings.Join(want, ","), func() bool {
		for _, m := range want {
			h, err := d.LedgerHeight(m)
			if err != nil || h == 0 {
				return false
			}
			last, _, err := d.LedgerBlock(ctx, m, h-1)
			if err != nil {
				return false
			}
			lc, err := block.LastConfigIndex(last)
			if err != nil || lc == 0 {
				return false
			}
			b, _, err := d.LedgerBlock(ctx, m, lc)
			if err != nil {
				return false
			}
			ce, _, err := channelconfig.ConfigTransactionOf(b)
			if err != nil || ce.Config.Sequence != next.Version()-1 {
				return false
			}
			if cfg == nil {
				cfg = b
			} else if !bytes.Equal(block.HeaderHash(cfg.Header), block.HeaderHash(b.Header)) {
				t.Fatalf("%s: CONFIG block %d differs", m, lc)
			}
		}
		return true
	})
	raw, err = block.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.lastConfig = filepath.Join(c.dir, "config-"+strconv.FormatUint(next.Version(), 10)+".block")
	if err := os.WriteFile(c.lastConfig, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

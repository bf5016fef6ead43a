package consortium_test

// A member org and consenter new to the channel (issue #14): the blocks it
// signs reach stock peers of the existing members and its own.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// TestNewConsenterLeadsStockPeers: 3 members with ledger.config_blocks and
// stock peers of member-a and member-b. Policy v2 adds member-d, an org
// that is not in the channel's genesis block, as a member and consenter
// with its TLS certificate (members[].ledger_consenter); its CONFIG block
// adds member-dMSP to the Application and Orderer groups. member-d starts
// (v2 in its policy folder, the channel's genesis block, an empty ledger),
// catches up, and 'memberd ledger transfer-leader' on the leader's host
// makes it the raft leader. The existing peers are pointed at member-d's
// ledger (address overrides, restarted), and member-d's own new stock peer
// joins from the genesis block and pulls from it too: every block member-d
// serves carries member-d's signature once it holds its CONFIG block, and
// all three peers commit every block, none refused. v3 then removes
// member-c from the consenters (a CONFIG block that member-d, leading,
// orders); the peers still follow.
func TestNewConsenterLeadsStockPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 4-member consortium and 3 stock peers")
	}
	fab := testenv.Fabric(t, "peer")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	L := initConsortium(t, 4, 1)
	a, b, c, dm := L.Members[0], L.Members[1], L.Members[2], L.Members[3]
	for _, m := range L.Members {
		editMemberConfig(t, L, m, func(c map[string]any) { c["ledger"].(map[string]any)["config_blocks"] = true })
	}
	dEntry := withoutLastMember(t, L)
	d := start(t, L, nil)
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	pa := newStockPeer(t, fab, L, d, a, "peer0", a, false)
	pb := newStockPeer(t, fab, L, d, b, "peer0", b, false)
	for _, p := range []*stockPeer{pa, pb} {
		p.start(t)
		p.join(t, ctx)
	}
	if _, err := d.LedgerSubmit(ctx, a, 3); err != nil {
		t.Fatal(err)
	}

	// v2: member-d joins as a member and consenter, its consenter TLS
	// certificate (its appliance identity) in the policy.
	dCertPEM, err := os.ReadFile(filepath.Join(L.Dir, "members", dm, "identity", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pusher := newConfigPusher(t, ctx, L, d)
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) {
		e := *dEntry
		e.LedgerConsenter = &policy.LedgerConsenter{TLSCert: string(dCertPEM), Port: demo.LedgerPeerPort}
		doc.Members = append(doc.Members, &e)
		doc.Ledger.Consenters = append(doc.Ledger.Consenters, dm)
	})
	c2 := pusher.push(v2, L.Members)
	ch2, err := channelconfig.Parse(c2)
	if err != nil {
		t.Fatal(err)
	}
	dMSP := dEntry.MSPID
	if !slices.ContainsFunc(ch2.Config.OrdererOrgs, func(o channelconfig.Org) bool { return o.MSPID == dMSP }) {
		t.Fatalf("CONFIG block %d of v2 has no orderer org %s", c2.Header.Number, dMSP)
	}
	if err := d.DropRelayPolicy(v2.Marshal()); err != nil {
		t.Fatal(err)
	}

	// member-d's appliance starts as the onboarding runbook has it: every
	// version since its pin in the policy folder, the genesis block, an
	// empty ledger.
	if err := os.WriteFile(filepath.Join(L.Dir, "members", dm, "policy", "v2.yaml"), readFile(t, filepath.Join(pusher.dir, "v2.yaml")), 0o644); err != nil {
		t.Fatal(err)
	}
	L.Members = append(L.Members, dm)
	if err := d.StartMember(ctx, dm); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, dm+" a caught-up consenter", func() bool {
		st := statusOf(t, d, dm)
		ha, err := d.LedgerHeight(a)
		if err != nil || st.State != "active" || st.Height < ha {
			return false
		}
		for _, x := range st.Consenters {
			if x.Member == dm {
				return true
			}
		}
		return false
	})

	// The leader hands the leadership to member-d, with the command line.
	leader := statusOf(t, d, a).Leader
	if leader == "" || leader == dm {
		t.Fatalf("leader before the transfer: %q", leader)
	}
	// Asked of a member that does not lead, the command names the leader.
	notLeader := a
	if leader == a {
		notLeader = b
	}
	if code, _, errb := runMemberd(t, "ledger", "transfer-leader", "--admin", d.AdminAddr(notLeader), dm); code != 1 || !strings.Contains(errb, leader+" leads it") {
		t.Fatalf("transfer-leader on %s, which does not lead: exit %d, want 1 naming the leader %s:\n%s", notLeader, code, leader, errb)
	}
	code, out, errb := runMemberd(t, "ledger", "transfer-leader", "--admin", d.AdminAddr(leader), dm)
	if code != 0 || !strings.Contains(out, "to "+dm) {
		t.Fatalf("memberd ledger transfer-leader %s on %s: exit %d:\n%s%s", dm, leader, code, out, errb)
	}
	t.Logf("memberd ledger transfer-leader: %s", strings.TrimSpace(out))
	for _, m := range L.Members {
		if got := statusOf(t, d, m).Leader; got != dm {
			t.Fatalf("%s says %q leads, want %s", m, got, dm)
		}
	}

	// Every peer pulls from member-d: a's and b's (restarted with address
	// overrides to member-d's ledger), and member-d's own, new one.
	for _, p := range []*stockPeer{pa, pb} {
		p.retarget(t, d, dm)
	}
	pd := newStockPeer(t, fab, L, d, dm, "peer0", dm, false)
	pd.start(t)
	pd.join(t, ctx)
	before, err := d.LedgerHeight(dm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.LedgerSubmit(ctx, b, 4); err != nil {
		t.Fatal(err)
	}
	height := sameHeight(t, d, L.Members, 60*time.Second)
	if height <= before {
		t.Fatalf("height %d after the submissions, want above %d", height, before)
	}
	// Blocks before..height-1 were cut while member-d led.
	if got := statusOf(t, d, b).Leader; got != dm {
		t.Fatalf("after the submissions %s leads, want %s", got, dm)
	}
	signedByD := signersFrom(t, ctx, d, dm, c2.Header.Number+1, height, dMSP, dCertPEM)
	pa.committedAll(t, ctx, height)
	pb.committedAll(t, ctx, height)
	pd.committedAllSince(t, ctx, height, c2.Header.Number)
	t.Logf("member-d leads and cut blocks %d..%d; blocks %d..%d as member-d serves them are signed by %s; the peers of %s, %s and %s committed all %d blocks",
		before, height-1, c2.Header.Number+1, height-1, dMSP, a, b, dm, height)
	if signedByD == 0 {
		t.Fatal("no block signed by member-d")
	}

	// v3: member-c is no consenter any more; member-d, leading, orders the
	// CONFIG block. The peers still follow.
	v3 := nextPolicy(t, L, v2, func(doc *policy.Document) {
		doc.Ledger.Consenters = slices.DeleteFunc(doc.Ledger.Consenters, func(id string) bool { return id == c })
		for _, m := range doc.Members {
			if m.ID == c {
				m.Roles = slices.DeleteFunc(m.Roles, func(r policy.Role) bool { return r == policy.RoleConsenter })
			}
		}
	})
	stay := []string{a, b, dm}
	c3 := pusher.push(v3, stay)
	ch3, err := channelconfig.Parse(c3)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ch3.Config.Consenters); n != 3 {
		t.Fatalf("%d consenters after v3, want 3", n)
	}
	if _, err := d.LedgerSubmit(ctx, a, 3); err != nil {
		t.Fatal(err)
	}
	height = sameHeight(t, d, stay, 60*time.Second)
	signersFrom(t, ctx, d, dm, c2.Header.Number+1, height, dMSP, dCertPEM)
	pa.committedAll(t, ctx, height)
	pb.committedAll(t, ctx, height)
	pd.committedAllSince(t, ctx, height, c2.Header.Number)
	if got := statusOf(t, d, a).Leader; got != dm {
		t.Logf("after v3, %s leads", got)
	} else {
		t.Logf("%s led while it ordered v3's CONFIG block %d", dm, c3.Header.Number)
	}
	t.Logf("v3 (CONFIG block %d) removed %s from the consenters; the three peers committed all %d blocks", c3.Header.Number, c, height)
}

// signersFrom checks that member serves blocks from..to-1 signed by itself
// (one signature, MSP mspID, certificate certPEM) and returns how many.
func signersFrom(t *testing.T, ctx context.Context, d *demo.Consortium, member string, from, to uint64, mspID string, certPEM []byte) int {
	t.Helper()
	want, _ := pem.Decode(certPEM)
	n := 0
	for num := from; num < to; num++ {
		b, _, err := d.LedgerBlock(ctx, member, num)
		if err != nil {
			t.Fatal(err)
		}
		sds, err := block.Signatures(b)
		if err != nil {
			t.Fatalf("block %d from %s: %v", num, member, err)
		}
		for _, sd := range sds {
			msp, cert, err := block.CreatorCertificate(sd.Identity)
			if err != nil {
				t.Fatalf("block %d from %s: %v", num, member, err)
			}
			if msp != mspID || want == nil || !bytes.Equal(cert.Raw, want.Bytes) {
				t.Fatalf("block %d as %s serves it is signed by %s %q, want %s's own identity", num, member, msp, cert.Subject, member)
			}
		}
		n++
	}
	return n
}

// withoutLastMember rewrites the demo layout L so that its last member is
// not in the genesis: policy version 1 (signed by the others) and the
// channel's genesis block list only the others, and every member and relay
// pins the new version 1. The last member's files (CA, keys, identity,
// memberd.yaml) stay for it to join later; L.Members no longer lists it,
// so start() runs the others only. It returns the member's policy entry.
func withoutLastMember(t *testing.T, L *demo.Layout) *policy.Member {
	t.Helper()
	last := L.Members[len(L.Members)-1]
	var doc policy.Document
	if err := yaml.Unmarshal(L.Genesis.DocumentBytes(), &doc); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(doc.Members, func(m *policy.Member) bool { return m.ID == last })
	entry := doc.Members[i]
	doc.Members = slices.Delete(doc.Members, i, i+1)
	doc.Ledger.Consenters = slices.DeleteFunc(doc.Ledger.Consenters, func(id string) bool { return id == last })
	raw, err := policy.MarshalDocument(&doc)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := policy.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	L.Members = L.Members[:len(L.Members)-1]
	certs := map[string]*x509.Certificate{}
	for _, m := range L.Members {
		k, err := hsm.OpenSoftSigner(L.AdminKey[m], &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		gen, err = gen.Sign(k, policy.AdminRef{Member: m, KeyID: "a1"})
		k.Close()
		if err != nil {
			t.Fatal(err)
		}
		p, _ := pem.Decode(readFile(t, filepath.Join(L.Dir, "members", m, "identity", "cert.pem")))
		if certs[m], err = x509.ParseCertificate(p.Bytes); err != nil {
			t.Fatal(err)
		}
	}
	blk, err := demo.LedgerGenesis(gen, certs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	L.Genesis = gen
	hash := gen.Hash().String()
	write := func(path string, b []byte) {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(L.Dir, "genesis.yaml"), gen.Marshal())
	write(filepath.Join(L.Dir, "genesis.hash"), []byte(hash+"\n"))
	for _, m := range append(slices.Clone(L.Members), last) {
		mdir := filepath.Join(L.Dir, "members", m)
		write(filepath.Join(mdir, "policy", "genesis.yaml"), gen.Marshal())
		write(filepath.Join(mdir, demo.LedgerGenesisFile), blk)
		editMemberConfig(t, L, m, func(c map[string]any) { c["policy"].(map[string]any)["genesis"] = hash })
	}
	for _, r := range L.Relays {
		write(filepath.Join(L.Dir, "relays", r, "policy", "genesis.yaml"), gen.Marshal())
		if err := confyaml.EditFile(L.RelayConfig[r], func(c map[string]any) { c["genesis"] = hash }); err != nil {
			t.Fatal(err)
		}
	}
	return entry
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// committedAllSince is committedAll for a peer that joined from the genesis
// block and pulls blocks signed by a consenter that CONFIG block cfgNum
// added: a stock peer checks a block it receives against the config it has
// committed, so it may refuse such a block once while it has received but
// not yet committed block cfgNum, and then pulls it again. Refusals are
// therefore allowed only before the peer logged committing cfgNum, and only
// of the block signature policy; none after, and every block committed.
func (p *stockPeer) committedAllSince(t *testing.T, ctx context.Context, height, cfgNum uint64) {
	t.Helper()
	p.waitHeight(t, ctx, height)
	log := p.log(t)
	cut := strings.Index(log, fmt.Sprintf("Committed block [%d]", cfgNum))
	if cut < 0 {
		t.Fatalf("stock peer of %s logged no commit of CONFIG block %d", p.member, cfgNum)
	}
	before, after := log[:cut], log[cut:]
	for _, bad := range append(peerRefusals, "error validating", "policy for [") {
		if strings.Contains(after, bad) {
			t.Fatalf("stock peer of %s logged %q after committing CONFIG block %d:\n%s", p.member, bad, cfgNum, grepLines(after, bad))
		}
	}
	transient := 0
	for _, l := range strings.Split(before, "\n") {
		switch {
		case strings.Contains(l, "could not be verified"):
			if !strings.Contains(l, "'Writers' sub-policies") {
				t.Fatalf("stock peer of %s refused a block for another reason than its signature:\n%s", p.member, l)
			}
			transient++
		case strings.Contains(l, "Block rejected"), strings.Contains(l, "error validating"), strings.Contains(l, "does not have an OU"):
			t.Fatalf("stock peer of %s logged before committing CONFIG block %d:\n%s", p.member, cfgNum, l)
		}
	}
	if committed := len(regexp.MustCompile(`Committed block \[\d+\]`).FindAllString(log, -1)); committed != int(height) {
		t.Fatalf("stock peer of %s committed %d blocks, want %d", p.member, committed, height)
	}
	t.Logf("stock peer of %s: %d blocks committed; %d block(s) received before CONFIG block %d was committed were refused once and pulled again", p.member, height, transient, cfgNum)
}

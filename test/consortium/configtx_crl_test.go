package consortium_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/channelconfig/channelconfigtest"
	"github.com/memberd/memberd/policy"
)

// TestPolicyConfigBlockCRLAndWriters: on a running 3-member consortium with
// ledger.config_blocks, member a's CA revokes one of a's client
// certificates with 'openssl ca -gencrl' (as docs/policy.md tells), and
// version 2 lists that CRL in members[].crls; version 3 takes the writer
// role from member c. Each becomes a CONFIG block whose LastUpdate is what
// the stock 'configtxlator compute_update' computes between the configs
// before and after. After version 2, the stock peer of a (having committed
// the CONFIG block) refuses the revoked client, and so does memberd's own
// Deliver, while a's admin is served by both. After version 3, c's Fabric
// Writers policy is the reject-all policy: the stock peer refuses the
// proposals of c's admin (ACL peer/Propose) and memberd refuses c's
// Broadcast, while a's are let through.
func TestPolicyConfigBlockCRLAndWriters(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-member consortium, the stock peer CLI and openssl")
	}
	opensslBin := testenv.Command(t, "openssl", "openssl")
	fab := testenv.Fabric(t, "peer", "configtxlator")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	L, d := startConfigBlocks(t, ctx, 3)
	a, c := L.Members[0], L.Members[2]
	adir := filepath.Join(L.Dir, "members", a)
	p := newStockPeer(t, fab, L, d, a, "peer0", a, false)
	p.start(t)
	p.join(t, ctx)
	if _, err := d.LedgerSubmit(ctx, a, 2); err != nil {
		t.Fatal(err)
	}

	// A client of a, made as docs/fabric-peers.md makes identities.
	lostMSP, lostCert := clientMSP(t, opensslBin, L, a, "lost-client")
	lostEnv := append(append([]string{}, p.env...), "CORE_PEER_MSPCONFIGPATH="+lostMSP)
	fetchNewest := func(env []string) (string, error) {
		return p.try(ctx, env, "channel", "fetch", "newest", filepath.Join(t.TempDir(), "newest.block"), "-c", "demo",
			"-o", d.LedgerAddr(a), "--tls", "--cafile", filepath.Join(adir, "ca.pem"))
	}
	p.waitHeight(t, ctx, sameHeight(t, d, L.Members, 20*time.Second))
	if _, err := p.try(ctx, lostEnv, "channel", "getinfo", "-c", "demo"); err != nil {
		t.Fatalf("the stock peer refuses the client before its revocation: %v", err)
	}
	if _, err := fetchNewest(lostEnv); err != nil {
		t.Fatalf("memberd refuses the client before its revocation: %v", err)
	}

	// a's CA revokes it; version 2 carries the CRL.
	crl := opensslCRL(t, opensslBin, adir, lostCert)
	v2, cfg2 := newConfigVersion(t, ctx, L, d, L.Genesis, func(doc *policy.Document) { doc.Members[0].CRLs = crl }, a, L.Members[1]).apply(t, ctx, L, d)
	if len(v2.Member(a).CRL) != 1 {
		t.Fatalf("version 2 lists %d CRLs of %s", len(v2.Member(a).CRL), a)
	}
	for _, section := range []string{"Orderer", "Application"} {
		if n := len(mspOf(t, cfg2, section, a+"MSP").RevocationList); n != 1 {
			t.Fatalf("%s/%sMSP has %d CRLs in the CONFIG block of version 2, want 1", section, a, n)
		}
	}

	// The stock peer commits the CONFIG block, then refuses the revoked
	// client; memberd refuses it too; a's admin is served by both.
	height := sameHeight(t, d, L.Members, 20*time.Second)
	p.committedAll(t, ctx, height)
	waitFor(t, 30*time.Second, "the stock peer to refuse the revoked client", func() bool {
		_, err := p.try(ctx, lostEnv, "channel", "getinfo", "-c", "demo")
		if err == nil {
			return false
		}
		t.Logf("stock peer, revoked client: %v", err)
		return true
	})
	if !strings.Contains(p.log(t), "The certificate has been revoked") {
		t.Fatalf("the stock peer refused the client, but not for its revocation:\n%s", lastLines(p.log(t), 20))
	}
	t.Logf("stock peer log: %s", grepLines(p.log(t), "The certificate has been revoked"))
	if out, err := fetchNewest(lostEnv); err == nil {
		t.Fatal("memberd's Deliver serves the client that a CRL in the policy revokes")
	} else {
		t.Logf("memberd, revoked client: %s", lastLines(out, 2))
	}
	p.cli(t, ctx, p.clientEnv(), "channel", "getinfo", "-c", "demo")
	if _, err := fetchNewest(p.clientEnv()); err != nil {
		t.Fatalf("a's admin after the CRL: %v", err)
	}

	// Version 3 takes the writer role from c: its Application Writers
	// becomes Fabric's reject-all policy, and memberd refuses its
	// transactions. Writers' mod_policy is c's own Admins (as in every
	// Fabric org), so a and b alone cannot change it: every member refuses
	// the version, naming the signature it lacks; with c's admin it applies.
	// A proposal for a chaincode that does not exist tells, by its error,
	// whether the stock peer's ACL check (peer/Propose ->
	// /Channel/Application/Writers, made before the chaincode lookup) let
	// the creator through.
	cEnv := append(append([]string{}, p.env...), "CORE_PEER_LOCALMSPID="+c+"MSP",
		"CORE_PEER_MSPCONFIGPATH="+filepath.Join(L.Dir, "members", c, "admin", "msp"))
	propose := func(env []string) string {
		out, err := p.try(ctx, env, "chaincode", "query", "-C", "demo", "-n", "nocc", "-c", `{"Args":["x"]}`)
		if err == nil {
			t.Fatal("a query of chaincode nocc, which is not defined, succeeded")
		}
		return out
	}
	const passedACL = "make sure the chaincode nocc has been successfully defined"
	if out := propose(cEnv); !strings.Contains(out, passedACL) {
		t.Fatalf("the stock peer refuses %s's admin before version 3:\n%s", c, lastLines(out, 5))
	}
	v3 := newConfigVersion(t, ctx, L, d, v2, func(doc *policy.Document) { doc.Members[2].Roles = []policy.Role{policy.RoleConsenter} }, a, L.Members[1])
	if _, res := v3.push(t, ctx, L, d); len(res) == 0 || !allRefused(res, "/Channel/Application/"+c+"MSP/Admins") {
		t.Fatalf("version 3 without %s's channel admin: %+v, want every member to refuse it for /Channel/Application/%sMSP/Admins", c, res, c)
	}
	v3.sign(t, L, c)
	_, cfg3 := v3.apply(t, ctx, L, d)
	orgs := channelconfigtest.DecodeOrgs(t, cfg3)
	for _, m := range L.Members {
		if w := orgs["Application"][m+"MSP"].Policies["Writers"].Policy.Value; w.RejectsAll() != (m == c) {
			t.Fatalf("configtxlator reads Application/%sMSP Writers as %+v; want reject-all only for %s", m, w, c)
		}
	}
	if _, err := d.LedgerSubmit(ctx, c, 1); err == nil || !strings.Contains(err.Error(), "FORBIDDEN") {
		t.Fatalf("memberd takes a transaction of %s, which lacks role writer: %v", c, err)
	}
	if _, err := d.LedgerSubmit(ctx, a, 1); err != nil {
		t.Fatalf("a writer after version 3: %v", err)
	}
	p.waitHeight(t, ctx, sameHeight(t, d, L.Members, 20*time.Second))
	out := propose(cEnv)
	if strings.Contains(out, passedACL) || !strings.Contains(out, "/Channel/Application/Writers") {
		t.Fatalf("the stock peer lets %s's admin propose after version 3:\n%s", c, lastLines(out, 5))
	}
	t.Logf("stock peer, proposal of %s (no writer role): %s", c, lastLines(out, 1))
	if out := propose(p.clientEnv()); !strings.Contains(out, passedACL) {
		t.Fatalf("the stock peer refuses a's admin after version 3:\n%s", lastLines(out, 5))
	}
}

// configVersion is a version being signed against the channel's last
// config block.
type configVersion struct {
	bundle, cfgBlock string // files
	oldCfg           *common.Config
	before           uint64 // a's height when it was made
}

// newConfigVersion makes the version after prev with edit and has signers
// sign both halves against the channel's last config block.
func newConfigVersion(t *testing.T, ctx context.Context, L *demo.Layout, d *demo.Consortium, prev *policy.Policy, edit func(*policy.Document), signers ...string) *configVersion {
	t.Helper()
	a := L.Members[0]
	before, err := d.LedgerHeight(a)
	if err != nil {
		t.Fatal(err)
	}
	last, _, err := d.LedgerBlock(ctx, a, before-1)
	if err != nil {
		t.Fatal(err)
	}
	lc, err := block.LastConfigIndex(last)
	if err != nil {
		t.Fatal(err)
	}
	inForce, _, err := d.LedgerBlock(ctx, a, lc)
	if err != nil {
		t.Fatal(err)
	}
	_, oldCfg, err := channelconfig.BlockConfig(inForce)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cv := &configVersion{bundle: filepath.Join(dir, "next.yaml"), cfgBlock: channelconfigtest.WriteProto(t, dir, "config.block", inForce),
		oldCfg: oldCfg, before: before}
	if err := os.WriteFile(cv.bundle, nextPolicy(t, L, prev, edit).Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	cv.sign(t, L, signers...)
	return cv
}

func (cv *configVersion) sign(t *testing.T, L *demo.Layout, signers ...string) {
	t.Helper()
	for _, m := range signers {
		signBoth(t, L, cv.bundle, m, cv.cfgBlock)
	}
}

// push pushes the version to member 0 and returns each member's answer.
func (cv *configVersion) push(t *testing.T, ctx context.Context, L *demo.Layout, d *demo.Consortium) (*policy.Policy, []demo.PushResult) {
	t.Helper()
	raw, err := os.ReadFile(cv.bundle)
	if err != nil {
		t.Fatal(err)
	}
	v, err := policy.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.PushPolicy(ctx, L.Members[0], v.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return v, res
}

// apply pushes the version, waits for its CONFIG block on every member and
// checks that the block's LastUpdate is configtxlator's compute_update
// between the config before and the config after, which it returns.
func (cv *configVersion) apply(t *testing.T, ctx context.Context, L *demo.Layout, d *demo.Consortium) (*policy.Policy, *common.Config) {
	t.Helper()
	v, res := cv.push(t, ctx, L, d)
	for _, r := range res {
		if !r.OK {
			t.Fatalf("push of version %d to %s: %s", v.Version(), r.Member, r.Detail)
		}
	}
	if err := d.DropRelayPolicy(v.Marshal()); err != nil {
		t.Fatal(err)
	}
	cfgNum, cfgBlk := waitConfigBlock(t, ctx, d, L.Members, cv.before)
	ce, cue, err := channelconfig.ConfigTransactionOf(cfgBlk)
	if err != nil {
		t.Fatal(err)
	}
	if ce.Config.Sequence != cv.oldCfg.Sequence+1 {
		t.Fatalf("config sequence %d after %d", ce.Config.Sequence, cv.oldCfg.Sequence)
	}
	want, mine := channelconfigtest.ComputeUpdate(t, "demo", cv.oldCfg, ce.Config), new(common.ConfigUpdate)
	if err := proto.Unmarshal(cue.ConfigUpdate, mine); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(want, mine) {
		t.Fatalf("version %d: LastUpdate differs from configtxlator compute_update:\nmemberd:       %v\nconfigtxlator: %v", v.Version(), mine, want)
	}
	t.Logf("version %d: CONFIG block %d (sequence %d), LastUpdate = configtxlator compute_update", v.Version(), cfgNum, ce.Config.Sequence)
	return v, ce.Config
}

// clientMSP makes a client identity of member (OU=client: an openssl key,
// 'memberd hsm csr', 'memberd ca sign' by the member CA) in a Fabric MSP
// folder; it returns the folder and the certificate file.
func clientMSP(t *testing.T, opensslBin string, L *demo.Layout, member, name string) (string, string) {
	t.Helper()
	mdir := filepath.Join(L.Dir, "members", member)
	mspDir := filepath.Join(t.TempDir(), "msp")
	for _, sub := range []string{"signcerts", "keystore", "cacerts"} {
		if err := os.MkdirAll(filepath.Join(mspDir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	key := filepath.Join(mspDir, "keystore", "key.pem")
	if out, err := exec.Command(opensslBin, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key).CombinedOutput(); err != nil {
		t.Fatalf("openssl ecparam: %v %s", err, out)
	}
	csr := filepath.Join(mspDir, "client.csr")
	memberd(t, "hsm", "csr", "--key", "file:"+key, "--insecure-file-key", "--cn", name+"."+member, "--org", member, "--ou", "client", "--out", csr)
	cert := filepath.Join(mspDir, "signcerts", "cert.pem")
	memberd(t, "ca", "sign", "--key", "file:"+filepath.Join(mdir, "ca-key.pem"), "--insecure-file-key",
		"--ca-cert", filepath.Join(mdir, "ca.pem"), "--csr", csr, "--out", cert)
	copyFile(t, filepath.Join(mdir, "ca.pem"), filepath.Join(mspDir, "cacerts", "ca.pem"))
	copyFile(t, filepath.Join(mdir, "admin", "msp", "config.yaml"), filepath.Join(mspDir, "config.yaml"))
	return mspDir, cert
}

// opensslCRL revokes cert with the member CA in mdir (ca.pem, ca-key.pem)
// and returns the CRL, with the openssl commands of docs/policy.md.
func opensslCRL(t *testing.T, opensslBin, mdir, cert string) string {
	t.Helper()
	dir := t.TempDir()
	cnf := `[ca]
default_ca = member_ca

[member_ca]
database         = ` + filepath.Join(dir, "index.txt") + `
crlnumber        = ` + filepath.Join(dir, "crlnumber") + `
certificate      = ` + filepath.Join(mdir, "ca.pem") + `
private_key      = ` + filepath.Join(mdir, "ca-key.pem") + `
default_md       = sha256
default_crl_days = 30
crl_extensions   = crl_ext

[crl_ext]
authorityKeyIdentifier = keyid:always
`
	for name, content := range map[string]string{"crl.cnf": cnf, "index.txt": "", "crlnumber": "01\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "crl.pem")
	for _, args := range [][]string{
		{"ca", "-config", filepath.Join(dir, "crl.cnf"), "-revoke", cert, "-crl_reason", "keyCompromise"},
		{"ca", "-config", filepath.Join(dir, "crl.cnf"), "-gencrl", "-out", out},
	} {
		if b, err := exec.Command(opensslBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mspOf returns the Fabric MSP config of org mspID in section (Orderer or
// Application) of cfg.
func mspOf(t *testing.T, cfg *common.Config, section, mspID string) *msp.FabricMSPConfig {
	t.Helper()
	g := cfg.GetChannelGroup().GetGroups()[section].GetGroups()[mspID]
	mc, fc := new(msp.MSPConfig), new(msp.FabricMSPConfig)
	if g == nil || proto.Unmarshal(g.GetValues()["MSP"].GetValue(), mc) != nil || proto.Unmarshal(mc.Config, fc) != nil {
		t.Fatalf("%s/%s has no MSP config", section, mspID)
	}
	return fc
}

func allRefused(res []demo.PushResult, why string) bool {
	for _, r := range res {
		if r.OK || !strings.Contains(r.Detail, why) {
			return false
		}
	}
	return true
}

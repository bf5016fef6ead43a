package channelconfig

import (
	"encoding/hex"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/channelconfig/channelconfigtest"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// fabricRejectAll is Fabric's policydsl.MarshaledRejectAllPolicy:
// SignaturePolicyEnvelope{Rule: NOutOf(1, no rules), no identities}.
const fabricRejectAll = "120412020801"

// TestFromPolicyMirrorsCRLsAndWriters: a member's CRLs become its MSP's
// revocation_list in the Orderer and the Application group, a member
// without the writer role gets Fabric's reject-all Writers policy, and the
// stock configtxlator decodes the result.
func TestFromPolicyMirrorsCRLsAndWriters(t *testing.T) {
	f := newUpdateFixture(t)
	revoked := f.c.CAs["m2"].Issue(t, "lost client", testpki.OU(ClientOU)).Cert
	crl := f.c.CAs["m2"].CRL(t, 7, revoked)
	p := policytest.MustParse(t, f.c.NextDocument(t, f.genesis, func(d *policy.Document) {
		d.Members[1].CRLs = crl
		d.Members[2].Roles = []policy.Role{policy.RoleConsenter}
	}))
	u, err := next(t, f.inForce, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := u.Config.ChannelGroup
	crlDER, _ := pem.Decode([]byte(crl))
	for _, section := range []string{"Orderer", "Application"} {
		for _, org := range []string{"m1MSP", "m2MSP", "m3MSP"} {
			fc := mspConfig(t, root.Groups[section].Groups[org])
			want := 0
			if org == "m2MSP" {
				want = 1
			}
			if len(fc.RevocationList) != want {
				t.Fatalf("%s/%s has %d CRLs, want %d", section, org, len(fc.RevocationList), want)
			}
			if want == 1 {
				b, _ := pem.Decode(fc.RevocationList[0])
				if b == nil || b.Type != "X509 CRL" || string(b.Bytes) != string(crlDER.Bytes) {
					t.Fatalf("%s/%s revocation list is not the policy's CRL as PEM", section, org)
				}
			}
		}
	}
	app := root.Groups["Application"]
	for _, org := range []string{"m1MSP", "m2MSP", "m3MSP"} {
		w := app.Groups[org].Policies["Writers"]
		got := hex.EncodeToString(w.GetPolicy().GetValue())
		if (got == fabricRejectAll) != (org == "m3MSP") || w.GetPolicy().GetType() != int32(common.Policy_SIGNATURE) {
			t.Fatalf("Application/%s Writers = %s (type %d); want Fabric's reject-all %s only for m3, the member without role writer",
				org, got, w.GetPolicy().GetType(), fabricRejectAll)
		}
	}
	// The Orderer group's Writers of m3 stays OR(member): its consenter
	// still signs blocks (BlockValidation).
	if isRejectAll(root.Groups["Orderer"].Groups["m3MSP"].Policies["Writers"].Policy) {
		t.Fatal("Orderer/m3MSP Writers became reject-all")
	}

	// The stock configtxlator decodes the config, and reads the CRL and
	// the reject-all policy as Fabric means them.
	orgs := channelconfigtest.DecodeOrgs(t, u.Config)
	for _, section := range []string{"Orderer", "Application"} {
		rl := orgs[section]["m2MSP"].Values.MSP.Value.Config.RevocationList
		if len(rl) != 1 || !strings.Contains(string(rl[0]), "BEGIN X509 CRL") {
			t.Fatalf("configtxlator reads %s/m2MSP revocation_list %q", section, rl)
		}
	}
	for _, org := range []string{"m1MSP", "m2MSP", "m3MSP"} {
		if w := orgs["Application"][org].Policies["Writers"].Policy.Value; w.RejectsAll() != (org == "m3MSP") {
			t.Fatalf("configtxlator reads Application/%s Writers as %+v; want reject-all only for m3MSP", org, w)
		}
	}
}

func mspConfig(t *testing.T, g *common.ConfigGroup) *msp.FabricMSPConfig {
	t.Helper()
	mc, fc := new(msp.MSPConfig), new(msp.FabricMSPConfig)
	if g == nil || proto.Unmarshal(g.GetValues()["MSP"].GetValue(), mc) != nil || proto.Unmarshal(mc.Config, fc) != nil {
		t.Fatal("no MSP config")
	}
	return fc
}

// TestAllWritersUnchanged: a consortium whose members all have the writer
// role and no CRL gets the Writers policy and MSP it always had.
func TestAllWritersUnchanged(t *testing.T) {
	f := newUpdateFixture(t)
	for _, org := range []string{"m1MSP", "m2MSP", "m3MSP"} {
		g := f.inForce.ChannelGroup.Groups["Application"].Groups[org]
		want := newGroup()
		addSignature(want, "Writers", org, msp.MSPRole_ADMIN, msp.MSPRole_CLIENT)
		if !proto.Equal(g.Policies["Writers"], want.Policies["Writers"]) {
			t.Fatalf("%s Writers is not OR(admin, client)", org)
		}
		if fc := mspConfig(t, g); fc.RevocationList != nil {
			t.Fatalf("%s has a revocation list", org)
		}
	}
}

// TestRoleHonoursCRL: the channel's own identity checks (admin signatures
// of config updates, block signers) refuse a certificate revoked by a CRL
// in its MSP, as a Fabric MSP does.
func TestRoleHonoursCRL(t *testing.T) {
	f := newUpdateFixture(t)
	ca := f.c.CAs["m2"]
	lost := ca.Issue(t, "lost admin", testpki.OU(AdminOU)).Cert
	kept := ca.Issue(t, "kept admin", testpki.OU(AdminOU)).Cert
	p := policytest.MustParse(t, f.c.NextDocument(t, f.genesis, func(d *policy.Document) { d.Members[1].CRLs = ca.CRL(t, 1, lost) }))
	u, err := next(t, f.inForce, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	before, err := ParseConfig("trade", f.inForce)
	if err != nil {
		t.Fatal(err)
	}
	after, err := ParseConfig("trade", u.Config)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := before.Role("m2MSP", lost); err != nil || r != AdminOU {
		t.Fatalf("before the CRL: role %q, %v", r, err)
	}
	if _, err := after.Role("m2MSP", lost); !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), "revoked by the CRL") {
		t.Fatalf("after the CRL: %v, want ErrIdentity (revoked)", err)
	}
	if r, err := after.Role("m2MSP", kept); err != nil || r != AdminOU {
		t.Fatalf("an unrevoked admin after the CRL: role %q, %v", r, err)
	}
	// m1's CA issues a certificate; m2's CRL does not touch it.
	other := f.c.CAs["m1"].Issue(t, "m1 admin", testpki.OU(AdminOU)).Cert
	if _, err := after.Role("m1MSP", other); err != nil {
		t.Fatalf("m1 admin: %v", err)
	}
}

// Package channelconfigtest runs the stock Fabric configtxlator for tests
// of channel configs (the binaries are found by internal/testenv.Fabric).
package channelconfigtest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testenv"
)

// ComputeUpdate runs the stock 'configtxlator compute_update' from old to
// cur for channel and returns the ConfigUpdate it writes.
func ComputeUpdate(t testing.TB, channel string, old, cur *common.Config) *common.ConfigUpdate {
	t.Helper()
	bin := filepath.Join(testenv.Fabric(t, "configtxlator"), "bin", "configtxlator")
	dir := t.TempDir()
	oldPB, newPB, out := WriteProto(t, dir, "old.pb", old), WriteProto(t, dir, "new.pb", cur), filepath.Join(dir, "delta.pb")
	cmd := exec.Command(bin, "compute_update", "--channel_id", channel, "--original", oldPB, "--updated", newPB, "--output", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("configtxlator compute_update: %v\n%s", err, b)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	cu := new(common.ConfigUpdate)
	if err := proto.Unmarshal(raw, cu); err != nil {
		t.Fatalf("configtxlator compute_update output: %v", err)
	}
	return cu
}

// WriteProto writes m, marshalled, to dir/name and returns the path.
func WriteProto(t testing.TB, dir, name string, m proto.Message) string {
	t.Helper()
	raw, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ProtoDecode runs the stock 'configtxlator proto_decode --type msgType' on
// m and returns the JSON it writes; the test fails when configtxlator
// cannot decode m (a stock peer or orderer could not either).
func ProtoDecode(t testing.TB, msgType string, m proto.Message) []byte {
	t.Helper()
	bin := filepath.Join(testenv.Fabric(t, "configtxlator"), "bin", "configtxlator")
	dir := t.TempDir()
	in, out := WriteProto(t, dir, "in.pb", m), filepath.Join(dir, "out.json")
	cmd := exec.Command(bin, "proto_decode", "--type", msgType, "--input", in, "--output", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("configtxlator proto_decode --type %s: %v\n%s", msgType, err, b)
	}
	js, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// SignaturePolicyJSON is a signature policy as configtxlator's JSON shows it.
type SignaturePolicyJSON struct {
	Rule struct {
		NOutOf *struct {
			N     int               `json:"n"`
			Rules []json.RawMessage `json:"rules"`
		} `json:"n_out_of"`
	} `json:"rule"`
	Identities []json.RawMessage `json:"identities"`
}

// RejectsAll reports whether p is Fabric's reject-all policy
// (policydsl.RejectAllPolicy): 1 out of no rules, over no identities.
func (p SignaturePolicyJSON) RejectsAll() bool {
	n := p.Rule.NOutOf
	return n != nil && n.N == 1 && len(n.Rules) == 0 && len(p.Identities) == 0
}

// OrgJSON is an org of configtxlator's common.Config JSON: the revocation
// list of its MSP (each entry a PEM CRL) and its signature policies.
type OrgJSON struct {
	Values struct {
		MSP struct {
			Value struct {
				Config struct {
					RevocationList [][]byte `json:"revocation_list"`
				} `json:"config"`
			} `json:"value"`
		} `json:"MSP"`
	} `json:"values"`
	Policies map[string]struct {
		Policy struct {
			Value SignaturePolicyJSON `json:"value"`
		} `json:"policy"`
	} `json:"policies"`
}

// DecodeOrgs decodes cfg with the stock 'configtxlator proto_decode' and
// returns the orgs of its sections: "Orderer" and "Application" -> org
// group name -> org.
func DecodeOrgs(t testing.TB, cfg *common.Config) map[string]map[string]OrgJSON {
	t.Helper()
	var doc struct {
		ChannelGroup struct {
			Groups map[string]struct {
				Groups map[string]OrgJSON `json:"groups"`
			} `json:"groups"`
		} `json:"channel_group"`
	}
	if err := json.Unmarshal(ProtoDecode(t, "common.Config", cfg), &doc); err != nil {
		t.Fatalf("configtxlator common.Config JSON: %v", err)
	}
	out := map[string]map[string]OrgJSON{}
	for section, g := range doc.ChannelGroup.Groups {
		out[section] = g.Groups
	}
	return out
}

package channelconfig

import (
	"crypto/rand"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/channelconfig/channelconfigtest"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// updateFixture is a 3-member consortium and its channel config in force
// (sequence 0, as GenesisBlock writes it).
type updateFixture struct {
	c       *policytest.Consortium
	genesis *policy.Policy
	tls     map[string]Consenter
	inForce *common.Config
}

func (f *updateFixture) consenter(t testing.TB, id string) Consenter {
	cert := f.c.CAs[id].Issue(t, id+" tls").Cert
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return Consenter{ClientTLSCert: p, ServerTLSCert: p}
}

func newUpdateFixture(t testing.TB) *updateFixture {
	f := &updateFixture{c: policytest.New(t, 3), tls: map[string]Consenter{}}
	for _, l := range f.c.Template.Members {
		l.LedgerEndpoints = []string{l.ID + ".example.test:7050"}
	}
	f.genesis = f.c.Genesis(t)
	for _, id := range policytest.Members(3) {
		f.tls[id] = f.consenter(t, id)
	}
	cc, err := FromPolicy(f.genesis, f.tls)
	if err != nil {
		t.Fatal(err)
	}
	cc.Raft = RaftOptions{ElectionTick: 20, TickInterval: 100 * time.Millisecond}
	// The config in force comes from a genesis block, as a node has it.
	b, err := GenesisBlock(cc, time.Unix(1700000000, 0), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, cfg, err := BlockConfig(b)
	if err != nil || id != "trade" {
		t.Fatalf("genesis block config: channel %q, %v", id, err)
	}
	f.inForce = cfg
	return f
}

// next derives the next update, twice, and checks both runs give the same
// bytes; consenters are only those of new members (the others are found in
// the config in force).
func next(t *testing.T, inForce *common.Config, p *policy.Policy, consenters map[string]Consenter) (*Update, error) {
	t.Helper()
	u, err := NextFromPolicy(inForce, "trade", p, consenters)
	if err != nil {
		return nil, err
	}
	again, err := NextFromPolicy(inForce, "trade", p, consenters)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	for _, pair := range [][2]proto.Message{{u.Config, again.Config}, {u.ConfigUpdate, again.ConfigUpdate}} {
		if a, b := mustMarshal(pair[0]), mustMarshal(pair[1]); string(a) != string(b) {
			t.Fatalf("%T differs between two runs on the same inputs", pair[0])
		}
	}
	if u.Config.Sequence != inForce.Sequence+1 {
		t.Fatalf("sequence %d after %d", u.Config.Sequence, inForce.Sequence)
	}
	return u, nil
}

// computeUpdate runs the stock configtxlator compute_update on two configs.
func computeUpdate(t *testing.T, old, cur *common.Config) *common.ConfigUpdate {
	return channelconfigtest.ComputeUpdate(t, "trade", old, cur)
}

func TestNextFromPolicy(t *testing.T) {
	f := newUpdateFixture(t)
	m4 := f.c.NewMember(t, "m4")
	m4.LedgerEndpoints = []string{"m4.example.test:7050"}
	m4tls := f.consenter(t, "m4")
	m2tls := f.consenter(t, "m2")
	tests := []struct {
		name       string
		edit       func(d *policy.Document)
		consenters map[string]Consenter
		check      func(t *testing.T, c Config)
	}{
		{name: "add writer member", edit: func(d *policy.Document) { d.Members = append(d.Members, m4) },
			check: func(t *testing.T, c Config) {
				if len(c.ApplicationOrgs) != 4 || len(c.OrdererOrgs) != 3 || len(c.Consenters) != 3 {
					t.Fatalf("orgs app %d orderer %d consenters %d, want 4 3 3", len(c.ApplicationOrgs), len(c.OrdererOrgs), len(c.Consenters))
				}
			}},
		{name: "add consenter member", consenters: map[string]Consenter{"m4": m4tls},
			edit: func(d *policy.Document) {
				m := *m4
				m.Roles = []policy.Role{policy.RoleConsenter, policy.RoleWriter}
				d.Members = append(d.Members, &m)
				d.Ledger.Consenters = append(d.Ledger.Consenters, "m4")
			},
			check: func(t *testing.T, c Config) {
				if len(c.ApplicationOrgs) != 4 || len(c.OrdererOrgs) != 4 || len(c.Consenters) != 4 {
					t.Fatalf("orgs app %d orderer %d consenters %d, want 4 4 4", len(c.ApplicationOrgs), len(c.OrdererOrgs), len(c.Consenters))
				}
				for i, id := range []string{"m1", "m2", "m3"} {
					if string(c.Consenters[i].ClientTLSCert) != string(f.tls[id].ClientTLSCert) {
						t.Errorf("consenter %s lost its TLS certificate in force", id)
					}
				}
			}},
		{name: "add consenter member with its TLS certificate in the policy",
			edit: func(d *policy.Document) {
				m := *m4
				m.Roles = []policy.Role{policy.RoleConsenter, policy.RoleWriter}
				m.LedgerConsenter = &policy.LedgerConsenter{TLSCert: string(m4tls.ClientTLSCert), Port: 7053}
				d.Members = append(d.Members, &m)
				d.Ledger.Consenters = append(d.Ledger.Consenters, "m4")
			},
			check: func(t *testing.T, c Config) {
				if len(c.Consenters) != 4 {
					t.Fatalf("%d consenters, want 4", len(c.Consenters))
				}
				cs := c.Consenters[3]
				if string(cs.ClientTLSCert) != string(m4tls.ClientTLSCert) || string(cs.ServerTLSCert) != string(m4tls.ClientTLSCert) || cs.Port != 7053 || cs.Host != m4.OverlayIP {
					t.Fatalf("m4's consenter %s:%d is not the policy's", cs.Host, cs.Port)
				}
			}},
		{name: "consenter TLS certificate replaced in the policy",
			edit: func(d *policy.Document) {
				d.Members[1].LedgerConsenter = &policy.LedgerConsenter{TLSCert: string(m2tls.ClientTLSCert)}
			},
			check: func(t *testing.T, c Config) {
				if cs := c.Consenters[1]; string(cs.ClientTLSCert) != string(m2tls.ClientTLSCert) || cs.Port != DefaultPort {
					t.Fatalf("m2's consenter keeps its certificate in force, or port %d", cs.Port)
				}
				if string(c.Consenters[0].ClientTLSCert) != string(f.tls["m1"].ClientTLSCert) {
					t.Fatal("m1's consenter changed")
				}
			}},
		{name: "remove member", edit: func(d *policy.Document) {
			d.Members = d.Members[:2]
			d.Ledger.Consenters = d.Ledger.Consenters[:2]
			d.Amendment = policy.Amendment{}
		},
			check: func(t *testing.T, c Config) {
				for _, o := range append(c.ApplicationOrgs, c.OrdererOrgs...) {
					if o.MSPID == "m3MSP" {
						t.Fatal("removed member m3 still has an org")
					}
				}
				if len(c.Consenters) != 2 {
					t.Fatalf("%d consenters, want 2", len(c.Consenters))
				}
			}},
		{name: "batch size", edit: func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 10; d.Ledger.BatchTimeout = "250ms" },
			check: func(t *testing.T, c Config) {
				if c.Batch.MaxMessageCount != 10 || c.Batch.BatchTimeout.String() != "250ms" {
					t.Fatalf("batch %+v", c.Batch)
				}
			}},
		{name: "orderer endpoints", edit: func(d *policy.Document) {
			d.Members[0].LedgerEndpoints = []string{"10.0.0.1:7050", "m1b.example.test:7050"}
		},
			check: func(t *testing.T, c Config) {
				i := slices.IndexFunc(c.OrdererOrgs, func(o Org) bool { return o.MSPID == "m1MSP" })
				if i < 0 || !slices.Equal(c.OrdererOrgs[i].OrdererEndpoints, []string{"10.0.0.1:7050", "m1b.example.test:7050"}) {
					t.Fatalf("m1 endpoints not updated: %+v", c.OrdererOrgs)
				}
			}},
		{name: "member CRL", edit: func(d *policy.Document) {
			revoked := f.c.CAs["m2"].Issue(t, "lost client", testpki.OU(ClientOU)).Cert
			d.Members[1].CRLs = f.c.CAs["m2"].CRL(t, 1, revoked)
		},
			check: func(t *testing.T, c Config) {
				for _, orgs := range [][]Org{c.ApplicationOrgs, c.OrdererOrgs} {
					i := slices.IndexFunc(orgs, func(o Org) bool { return o.MSPID == "m2MSP" })
					if i < 0 || len(orgs[i].CRLs) != 1 {
						t.Fatalf("m2's CRL is not in its MSP: %+v", orgs)
					}
				}
			}},
		{name: "writer role removed", edit: func(d *policy.Document) { d.Members[2].Roles = []policy.Role{policy.RoleConsenter} },
			check: func(t *testing.T, c Config) {
				for _, o := range c.ApplicationOrgs {
					if o.ReadOnly != (o.MSPID == "m3MSP") {
						t.Fatalf("application org %s ReadOnly %v", o.MSPID, o.ReadOnly)
					}
				}
			}},
		{name: "CA rotation", edit: func(d *policy.Document) {
			ca := testpki.NewCA(t, "m2 CA 2")
			d.Members[1].CACerts += ca.PEM
		},
			check: func(t *testing.T, c Config) {
				i := slices.IndexFunc(c.ApplicationOrgs, func(o Org) bool { return o.MSPID == "m2MSP" })
				if i < 0 || len(c.ApplicationOrgs[i].RootCerts) != 2 {
					t.Fatalf("m2 root CAs not updated: %+v", c.ApplicationOrgs)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := policytest.MustParse(t, f.c.NextDocument(t, f.genesis, tc.edit))
			u, err := next(t, f.inForce, p, tc.consenters)
			if err != nil {
				t.Fatal(err)
			}
			ch, err := ParseConfig("trade", u.Config)
			if err != nil {
				t.Fatalf("next config does not parse: %v", err)
			}
			tc.check(t, ch.Config)
			want := computeUpdate(t, f.inForce, u.Config)
			if !proto.Equal(u.ConfigUpdate, want) {
				t.Fatalf("delta differs from configtxlator compute_update:\nmemberd:      %v\nconfigtxlator: %v", u.ConfigUpdate, want)
			}
			if string(mustMarshal(u.ConfigUpdate)) != string(mustMarshal(want)) {
				t.Fatal("delta equal but not byte-equal under deterministic marshal")
			}
			checkWriteSetVersions(t, "Channel", want.WriteSet, u.Config.ChannelGroup)
			if got := applyDelta(t, "Channel", f.inForce.ChannelGroup, want.ReadSet, want.WriteSet); !proto.Equal(got, u.Config.ChannelGroup) {
				t.Fatal("the config in force with configtxlator's delta applied differs from the next config")
			}
		})
	}
}

// TestNextFromPolicyChain applies two updates in turn, so that versions
// above 0 and 1 are compared with configtxlator too.
func TestNextFromPolicyChain(t *testing.T) {
	f := newUpdateFixture(t)
	cfg, pol := f.inForce, f.genesis
	for i, edit := range []func(d *policy.Document){
		func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 100 },
		func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 50; d.Members[2].LedgerEndpoints = nil },
		func(d *policy.Document) { d.Members = append(d.Members, f.c.NewMember(t, "m9")) },
		func(d *policy.Document) { d.Members[3].Roles = []policy.Role{policy.RoleReader} },
		func(d *policy.Document) { d.Members[3].Roles = []policy.Role{policy.RoleReader, policy.RoleWriter} },
	} {
		p := policytest.MustParse(t, f.c.NextDocument(t, pol, edit))
		u, err := next(t, cfg, p, nil)
		if err != nil {
			t.Fatalf("update %d: %v", i+1, err)
		}
		want := computeUpdate(t, cfg, u.Config)
		if !proto.Equal(u.ConfigUpdate, want) {
			t.Fatalf("update %d: delta differs from configtxlator:\nmemberd:      %v\nconfigtxlator: %v", i+1, u.ConfigUpdate, want)
		}
		checkWriteSetVersions(t, "Channel", want.WriteSet, u.Config.ChannelGroup)
		if got := applyDelta(t, "Channel", cfg.ChannelGroup, want.ReadSet, want.WriteSet); !proto.Equal(got, u.Config.ChannelGroup) {
			t.Fatalf("update %d: the config in force with configtxlator's delta applied differs from the next config", i+1)
		}
		cfg, pol = u.Config, p
	}
	ch, err := ParseConfig("trade", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Config.Raft.ElectionTick != 20 || ch.Config.Raft.TickInterval != 100*time.Millisecond {
		t.Fatalf("raft options in force not kept: %+v", ch.Config.Raft)
	}
	if cfg.Sequence != 5 {
		t.Fatalf("sequence %d after five updates", cfg.Sequence)
	}
	if w := cfg.ChannelGroup.Groups["Application"].Groups["m9MSP"].Policies["Writers"]; w.Version != 2 || isRejectAll(w.Policy) {
		t.Fatalf("m9's Writers after the writer role is taken and given back: version %d, reject-all %v; want version 2, OR(admin, client)", w.Version, isRejectAll(w.Policy))
	}
	bs := cfg.ChannelGroup.Groups["Orderer"].Values["BatchSize"]
	if bs.Version != 2 {
		t.Fatalf("BatchSize version %d after two changes, want 2", bs.Version)
	}
	if v := cfg.ChannelGroup.Groups["Application"].Version; v != 1 {
		t.Fatalf("Application group version %d after one org added, want 1", v)
	}
}

func TestNextFromPolicyNoChange(t *testing.T) {
	f := newUpdateFixture(t)
	for name, edit := range map[string]func(d *policy.Document){
		"same document":   nil,
		"unmirrored ACL":  func(d *policy.Document) { d.ACL = d.ACL[:0] },
		"unmirrored text": func(d *policy.Document) { d.Description = "edited" },
	} {
		t.Run(name, func(t *testing.T) {
			p := policytest.MustParse(t, f.c.NextDocument(t, f.genesis, edit))
			if _, err := NextFromPolicy(f.inForce, "trade", p, nil); !errors.Is(err, ErrNoChange) {
				t.Fatalf("err %v, want ErrNoChange", err)
			}
		})
	}
}

func TestNextFromPolicyErrors(t *testing.T) {
	f := newUpdateFixture(t)
	m4 := f.c.NewMember(t, "m4")
	for name, tc := range map[string]struct {
		channel string
		edit    func(d *policy.Document)
	}{
		"channel renamed": {"trade", func(d *policy.Document) { d.Ledger.Channel = "other" }},
		"wrong channel":   {"other", nil},
		"new consenter without TLS certificate": {"trade", func(d *policy.Document) {
			m4.Roles = []policy.Role{policy.RoleConsenter}
			d.Members = append(d.Members, m4)
			d.Ledger.Consenters = append(d.Ledger.Consenters, "m4")
		}},
	} {
		t.Run(name, func(t *testing.T) {
			p := policytest.MustParse(t, f.c.NextDocument(t, f.genesis, tc.edit))
			_, err := NextFromPolicy(f.inForce, tc.channel, p, nil)
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err %v, want ErrConfig", err)
			}
			t.Log(err)
		})
	}
}

// checkWriteSetVersions checks that every element of configtxlator's write
// set has, in the next config, the version the write set gives it (what a
// Fabric orderer's config after applying the delta holds), groups included.
func checkWriteSetVersions(t *testing.T, path string, w, got *common.ConfigGroup) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: in the write set, not in the next config", path)
	}
	if w.Version != got.Version {
		t.Errorf("%s: group version %d in the next config, write set %d", path, got.Version, w.Version)
	}
	for k, v := range w.Values {
		if g := got.Values[k]; g == nil || g.Version != v.Version {
			t.Errorf("%s/%s: value version in next config %v, write set %d", path, k, g.GetVersion(), v.Version)
		}
	}
	for k, p := range w.Policies {
		if g := got.Policies[k]; g == nil || g.Version != p.Version {
			t.Errorf("%s/%s: policy version in next config %v, write set %d", path, k, g.GetVersion(), p.Version)
		}
	}
	for k, g := range w.Groups {
		checkWriteSetVersions(t, path+"/"+k, g, got.Groups[k])
	}
}

// applyDelta applies a ConfigUpdate to the config in force the way a Fabric
// orderer and peer do (configtx: an element of the write set is written when
// its version differs from the read set's, or it is not in the read set; a
// written element must be new at version 0 or at its version in force + 1;
// a written group takes the key set of its write-set entry) and returns the
// resulting channel group, which must equal the next config's exactly.
func applyDelta(t *testing.T, path string, old, read, write *common.ConfigGroup) *common.ConfigGroup {
	t.Helper()
	checkVersion := func(what string, inForce interface{ GetVersion() uint64 }, exists bool, v uint64) {
		if exists && v != inForce.GetVersion()+1 || !exists && v != 0 {
			t.Errorf("%s: written at version %d, in force %d (exists %v)", what, v, inForce.GetVersion(), exists)
		}
	}
	out := &common.ConfigGroup{Values: map[string]*common.ConfigValue{}, Policies: map[string]*common.ConfigPolicy{}, Groups: map[string]*common.ConfigGroup{}}
	keys := old
	if read == nil || read.Version != write.Version {
		checkVersion(path, old, old != nil, write.Version)
		keys = write
	}
	out.Version, out.ModPolicy = keys.GetVersion(), keys.GetModPolicy()
	for k := range keys.GetValues() {
		w, r := write.GetValues()[k], read.GetValues()[k]
		if w != nil && (r == nil || r.Version != w.Version) {
			o, ok := old.GetValues()[k]
			checkVersion(path+"/"+k, o, ok, w.Version)
			out.Values[k] = w
		} else {
			out.Values[k] = old.GetValues()[k]
		}
	}
	for k := range keys.GetPolicies() {
		w, r := write.GetPolicies()[k], read.GetPolicies()[k]
		if w != nil && (r == nil || r.Version != w.Version) {
			o, ok := old.GetPolicies()[k]
			checkVersion(path+"/"+k, o, ok, w.Version)
			out.Policies[k] = w
		} else {
			out.Policies[k] = old.GetPolicies()[k]
		}
	}
	for k := range keys.GetGroups() {
		if w := write.GetGroups()[k]; w != nil {
			out.Groups[k] = applyDelta(t, path+"/"+k, old.GetGroups()[k], read.GetGroups()[k], w)
		} else {
			out.Groups[k] = old.GetGroups()[k]
		}
	}
	return out
}

// FuzzNextFromPolicy feeds arbitrary bytes as the config in force (it comes
// from a block on disk or from a peer): NextFromPolicy must return an error
// or a config one sequence higher, never panic.
func FuzzNextFromPolicy(f *testing.F) {
	fx := newUpdateFixture(f)
	p := policytest.MustParse(f, fx.c.NextDocument(f, fx.genesis, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 7 }))
	f.Add(mustMarshal(fx.inForce))
	f.Add(mustMarshal(&common.Config{Sequence: 1, ChannelGroup: &common.ConfigGroup{Groups: map[string]*common.ConfigGroup{"Orderer": {}}}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg := new(common.Config)
		if proto.Unmarshal(raw, cfg) != nil {
			return
		}
		u, err := NextFromPolicy(cfg, "trade", p, nil)
		if err == nil && u.Config.Sequence != cfg.Sequence+1 {
			t.Fatalf("sequence %d after %d", u.Config.Sequence, cfg.Sequence)
		}
	})
}

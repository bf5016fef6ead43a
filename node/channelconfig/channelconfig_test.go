package channelconfig

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer/etcdraft"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
)

// realGenesis decodes the configtxgen genesis block of the Fabric vectors.
func realGenesis(t *testing.T, name string) (*common.Block, *block.Envelope, *common.ConfigEnvelope) {
	t.Helper()
	raw, err := os.ReadFile("../testdata/fabric-2.5.16/" + name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	e, err := block.ParseEnvelope(b.Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	ce := new(common.ConfigEnvelope)
	if err := proto.Unmarshal(e.Data, ce); err != nil {
		t.Fatal(err)
	}
	return b, e, ce
}

func unmarshal[T proto.Message](t *testing.T, raw []byte, m T) T {
	t.Helper()
	if err := proto.Unmarshal(raw, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func orgFrom(t *testing.T, g *common.ConfigGroup, name string) Org {
	mc := unmarshal(t, g.Values["MSP"].Value, new(msp.MSPConfig))
	fc := unmarshal(t, mc.Config, new(msp.FabricMSPConfig))
	o := Org{Name: name, MSPID: fc.Name, RootCerts: fc.RootCerts, IntermediateCerts: fc.IntermediateCerts, TLSRootCerts: fc.TlsRootCerts}
	if ep, ok := g.Values["Endpoints"]; ok {
		o.OrdererEndpoints = unmarshal(t, ep.Value, new(common.OrdererAddresses)).Addresses
	}
	return o
}

// configFrom recovers this package's input from a configtxgen channel group.
func configFrom(t *testing.T, channelID string, root *common.ConfigGroup) Config {
	c := Config{ChannelID: channelID}
	ord, app := root.Groups["Orderer"], root.Groups["Application"]
	for _, k := range sortedKeys(ord.Groups) {
		c.OrdererOrgs = append(c.OrdererOrgs, orgFrom(t, ord.Groups[k], k))
	}
	for _, k := range sortedKeys(app.Groups) {
		c.ApplicationOrgs = append(c.ApplicationOrgs, orgFrom(t, app.Groups[k], k))
	}
	bs := unmarshal(t, ord.Values["BatchSize"].Value, new(orderer.BatchSize))
	bt := unmarshal(t, ord.Values["BatchTimeout"].Value, new(orderer.BatchTimeout))
	var err error
	if c.Batch, err = block.CutterConfigFromFabric(bs, bt); err != nil {
		t.Fatal(err)
	}
	ct := unmarshal(t, ord.Values["ConsensusType"].Value, new(orderer.ConsensusType))
	md := unmarshal(t, ct.Metadata, new(etcdraft.ConfigMetadata))
	for _, cs := range md.Consenters {
		c.Consenters = append(c.Consenters, Consenter{Host: cs.Host, Port: cs.Port, ClientTLSCert: cs.ClientTlsCert, ServerTLSCert: cs.ServerTlsCert})
	}
	tick, err := time.ParseDuration(md.Options.TickInterval)
	if err != nil {
		t.Fatal(err)
	}
	c.Raft = RaftOptions{TickInterval: tick, ElectionTick: md.Options.ElectionTick, HeartbeatTick: md.Options.HeartbeatTick, MaxInflightBlocks: md.Options.MaxInflightBlocks, SnapshotIntervalSize: md.Options.SnapshotIntervalSize}
	return c
}

// compareGroups reports every difference in keys, versions, mod policies,
// and decoded values/policies between two config groups.
func compareGroups(t *testing.T, path string, got, want *common.ConfigGroup) {
	t.Helper()
	if got.ModPolicy != want.ModPolicy || got.Version != want.Version {
		t.Errorf("%s: mod_policy %q v%d, want %q v%d", path, got.ModPolicy, got.Version, want.ModPolicy, want.Version)
	}
	keysEqual := func(kind string, g, w []string) {
		if !equalStrings(g, w) {
			t.Errorf("%s: %s keys %v, want %v", path, kind, g, w)
		}
	}
	keysEqual("value", sortedKeys(got.Values), sortedKeys(want.Values))
	keysEqual("policy", sortedKeys(got.Policies), sortedKeys(want.Policies))
	keysEqual("group", sortedKeys(got.Groups), sortedKeys(want.Groups))
	for k, w := range want.Values {
		g, ok := got.Values[k]
		if !ok {
			continue
		}
		if g.ModPolicy != w.ModPolicy || g.Version != w.Version {
			t.Errorf("%s/%s: mod_policy %q v%d, want %q v%d", path, k, g.ModPolicy, g.Version, w.ModPolicy, w.Version)
		}
		if !sameMessage(t, k, g.Value, w.Value) {
			t.Errorf("%s value %s differs from configtxgen's", path, k)
		}
	}
	for k, w := range want.Policies {
		g, ok := got.Policies[k]
		if !ok {
			continue
		}
		if !proto.Equal(g, w) {
			t.Errorf("%s policy %s differs from configtxgen's: got %v, want %v", path, k, g, w)
		}
	}
	for k, w := range want.Groups {
		if g, ok := got.Groups[k]; ok {
			compareGroups(t, path+"/"+k, g, w)
		}
	}
}

// sameMessage compares two encoded config values semantically (map order
// in configtxgen's encoding is not deterministic).
func sameMessage(t *testing.T, key string, a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var ma, mb proto.Message
	switch key {
	case "Capabilities":
		ma, mb = new(common.Capabilities), new(common.Capabilities)
	case "MSP":
		x, y := unmarshal(t, a, new(msp.MSPConfig)), unmarshal(t, b, new(msp.MSPConfig))
		return x.Type == y.Type && proto.Equal(unmarshal(t, x.Config, new(msp.FabricMSPConfig)), unmarshal(t, y.Config, new(msp.FabricMSPConfig)))
	case "ConsensusType":
		x, y := unmarshal(t, a, new(orderer.ConsensusType)), unmarshal(t, b, new(orderer.ConsensusType))
		return x.Type == y.Type && x.State == y.State && proto.Equal(unmarshal(t, x.Metadata, new(etcdraft.ConfigMetadata)), unmarshal(t, y.Metadata, new(etcdraft.ConfigMetadata)))
	default:
		return false
	}
	return proto.Equal(unmarshal(t, a, ma), unmarshal(t, b, mb))
}

func equalStrings(a, b []string) bool {
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

// The builder, fed the orgs, consenters and batch settings of a real
// configtxgen genesis block, produces the same channel configuration: the
// same groups, values and policies, each value and policy equal.
func TestChannelGroupMatchesConfigtxgen(t *testing.T) {
	for _, name := range []string{"genesis.block", "vectors-0.block"} {
		t.Run(name, func(t *testing.T) {
			_, e, ce := realGenesis(t, name)
			want := ce.Config.ChannelGroup
			cfg := configFrom(t, e.ChannelID(), want)
			got, err := ChannelGroup(cfg)
			if err != nil {
				t.Fatal(err)
			}
			compareGroups(t, "Channel", got, want)
		})
	}
}

// GenesisBlock with configtxgen's timestamp and nonce reproduces the real
// genesis block: same header and TxId, same config, same metadata.
func TestGenesisBlockMatchesConfigtxgen(t *testing.T) {
	real, e, ce := realGenesis(t, "genesis.block")
	cfg := configFrom(t, e.ChannelID(), ce.Config.ChannelGroup)
	b, err := GenesisBlock(cfg, e.ChannelHeader.Timestamp.AsTime(), bytes.NewReader(e.SignatureHeader.Nonce))
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Verify(b, nil); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if b.Header.Number != 0 || len(b.Header.PreviousHash) != 0 || len(b.Data.Data) != 1 {
		t.Fatalf("genesis header %v with %d envelopes", b.Header, len(b.Data.Data))
	}
	for i := range real.Metadata.Metadata {
		if !bytes.Equal(b.Metadata.Metadata[i], real.Metadata.Metadata[i]) {
			t.Errorf("metadata slot %d: %x, configtxgen wrote %x", i, b.Metadata.Metadata[i], real.Metadata.Metadata[i])
		}
	}
	if lc, err := block.LastConfigIndex(b); err != nil || lc != 0 {
		t.Errorf("LastConfigIndex %d, %v", lc, err)
	}
	ge, err := block.ParseEnvelope(b.Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(ge.ChannelHeader, e.ChannelHeader) {
		t.Errorf("channel header %v, want %v", ge.ChannelHeader, e.ChannelHeader)
	}
	if !proto.Equal(ge.SignatureHeader, e.SignatureHeader) || len(ge.Signature) != 0 {
		t.Errorf("signature header or signature differ from configtxgen's")
	}
	if err := ge.CheckTxID(); err != nil {
		t.Errorf("TxId: %v", err)
	}
	gce := unmarshal(t, ge.Data, new(common.ConfigEnvelope))
	if gce.Config.Sequence != 0 || gce.LastUpdate != nil {
		t.Errorf("config sequence %d, last update %v", gce.Config.Sequence, gce.LastUpdate)
	}
	compareGroups(t, "Channel", gce.Config.ChannelGroup, ce.Config.ChannelGroup)
}

func TestValidate(t *testing.T) {
	_, e, ce := realGenesis(t, "genesis.block")
	good := configFrom(t, e.ChannelID(), ce.Config.ChannelGroup)
	if err := good.Validate(); err != nil {
		t.Fatalf("configtxgen's own input: %v", err)
	}
	mutate := map[string]func(c *Config){
		"upper case channel":   func(c *Config) { c.ChannelID = "MyChannel" },
		"empty channel":        func(c *Config) { c.ChannelID = "" },
		"no orderer orgs":      func(c *Config) { c.OrdererOrgs = nil },
		"no consenters":        func(c *Config) { c.Consenters = nil },
		"duplicate org":        func(c *Config) { c.ApplicationOrgs = append(c.ApplicationOrgs, c.ApplicationOrgs[0]) },
		"org without CA":       func(c *Config) { c.ApplicationOrgs[0].RootCerts = nil },
		"org without MSP id":   func(c *Config) { c.OrdererOrgs[0].MSPID = "" },
		"CA not PEM":           func(c *Config) { c.OrdererOrgs[0].RootCerts = [][]byte{[]byte("nope")} },
		"bad endpoint":         func(c *Config) { c.OrdererOrgs[0].OrdererEndpoints = []string{"127.0.0.1"} },
		"consenter port":       func(c *Config) { c.Consenters[0].Port = 70000 },
		"consenter cert":       func(c *Config) { c.Consenters[0].ServerTLSCert = nil },
		"preferred > absolute": func(c *Config) { c.Batch.PreferredMaxBytes = c.Batch.AbsoluteMaxBytes + 1 },
	}
	for name, m := range mutate {
		c := configFrom(t, e.ChannelID(), ce.Config.ChannelGroup)
		m(&c)
		if _, err := GenesisBlock(c, time.Now(), rand.Reader); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
}

// A memberd consortium: every member is both an orderer org (one consenter
// each) and an application org.
func TestGenesisForMembers(t *testing.T) {
	var orgs []Org
	var consenters []Consenter
	for i, m := range []string{"MemberA", "MemberB", "MemberC"} {
		orgs = append(orgs, Org{
			MSPID:            m,
			RootCerts:        [][]byte{[]byte(testpki.NewCA(t, m+" CA").PEM)},
			TLSRootCerts:     [][]byte{[]byte(testpki.NewCA(t, m+" TLS CA").PEM)},
			OrdererEndpoints: []string{fmt.Sprintf("10.99.0.%d:7050", i+1)},
		})
		tls := []byte(testpki.NewCA(t, m+" node").PEM) // any certificate will do
		consenters = append(consenters, Consenter{Host: fmt.Sprintf("10.99.0.%d", i+1), Port: 7050, ClientTLSCert: tls, ServerTLSCert: tls})
	}
	cfg := Config{ChannelID: "consortium", OrdererOrgs: orgs, ApplicationOrgs: orgs, Consenters: consenters,
		Batch: block.CutterConfig{MaxMessageCount: 500, BatchTimeout: 250 * time.Millisecond}}
	b, err := GenesisBlock(cfg, time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := block.Verify(b, nil); err != nil {
		t.Fatal(err)
	}
	e, err := block.ParseEnvelope(b.Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	if e.Type() != common.HeaderType_CONFIG || e.ChannelID() != "consortium" || e.CheckTxID() != nil {
		t.Fatalf("genesis envelope: type %s channel %q", e.Type(), e.ChannelID())
	}
	root := unmarshal(t, e.Data, new(common.ConfigEnvelope)).Config.ChannelGroup
	for _, g := range []string{"Orderer", "Application"} {
		if got := sortedKeys(root.Groups[g].Groups); !equalStrings(got, []string{"MemberA", "MemberB", "MemberC"}) {
			t.Errorf("%s orgs %v", g, got)
		}
	}
	ord := root.Groups["Orderer"]
	bt := unmarshal(t, ord.Values["BatchTimeout"].Value, new(orderer.BatchTimeout))
	bs := unmarshal(t, ord.Values["BatchSize"].Value, new(orderer.BatchSize))
	if got, err := block.CutterConfigFromFabric(bs, bt); err != nil || got != (block.CutterConfig{MaxMessageCount: 500, AbsoluteMaxBytes: 10 << 20, PreferredMaxBytes: 2 << 20, BatchTimeout: 250 * time.Millisecond}) {
		t.Errorf("batch config %+v, %v", got, err)
	}
	md := unmarshal(t, unmarshal(t, ord.Values["ConsensusType"].Value, new(orderer.ConsensusType)).Metadata, new(etcdraft.ConfigMetadata))
	if len(md.Consenters) != 3 || md.Options.TickInterval != "500ms" || md.Options.ElectionTick != 10 {
		t.Errorf("etcdraft metadata: %v", md)
	}
	caps := unmarshal(t, root.Groups["Application"].Values["Capabilities"].Value, new(common.Capabilities))
	if _, ok := caps.Capabilities["V2_5"]; !ok || len(caps.Capabilities) != 1 {
		t.Errorf("application capabilities %v", caps)
	}
}

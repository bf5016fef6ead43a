package channelconfig

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

func readBlock(t testing.TB, name string) *common.Block {
	t.Helper()
	raw, err := os.ReadFile("../testdata/fabric-2.5.16/" + name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseFabricConfigBlocks(t *testing.T) {
	wantCaps := map[string][]string{"Channel": {"V2_0"}, "Orderer": {"V2_0"}, "Application": {"V2_5"}}
	tests := []struct {
		file, channel string
		seq           uint64
		batch         block.CutterConfig
	}{
		{"genesis.block", "mychannel", 0, block.CutterConfig{MaxMessageCount: 10, AbsoluteMaxBytes: 99 << 20, PreferredMaxBytes: 512 << 10, BatchTimeout: 2 * time.Second}},
		{"vectors-0.block", "vectors", 0, block.CutterConfig{MaxMessageCount: 10, AbsoluteMaxBytes: 99 << 20, PreferredMaxBytes: 2 << 20, BatchTimeout: 2 * time.Second}},
		// The config update set BatchTimeout from 2s to 1s.
		{"config-update.block", "mychannel", 1, block.CutterConfig{MaxMessageCount: 10, AbsoluteMaxBytes: 99 << 20, PreferredMaxBytes: 512 << 10, BatchTimeout: time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			b := readBlock(t, tc.file)
			if !IsConfigBlock(b) {
				t.Fatal("IsConfigBlock = false")
			}
			ch, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if ch.Config.ChannelID != tc.channel || ch.Sequence != tc.seq || ch.Config.Batch != tc.batch {
				t.Errorf("channel %q seq %d batch %+v; want %q %d %+v", ch.Config.ChannelID, ch.Sequence, ch.Config.Batch, tc.channel, tc.seq, tc.batch)
			}
			if !reflect.DeepEqual(ch.Capabilities, wantCaps) {
				t.Errorf("capabilities %v", ch.Capabilities)
			}
			if len(ch.Config.Consenters) != 1 || ch.Config.Consenters[0].Host != "127.0.0.1" || ch.Config.Consenters[0].Port != 7050 {
				t.Errorf("consenters %+v", ch.Config.Consenters)
			}
			if o := ch.Config.OrdererOrgs; len(o) != 1 || o[0].Name != "OrdererOrg" || o[0].MSPID != "OrdererMSP" || o[0].OrdererEndpoints[0] != "127.0.0.1:7050" {
				t.Errorf("orderer orgs %+v", o)
			}
			if a := ch.Config.ApplicationOrgs; len(a) != 1 || a[0].MSPID != "Org1MSP" || a[0].Name != "" {
				t.Errorf("application orgs %+v", a)
			}
			// What Parse returns rebuilds the same channel group.
			g, err := ChannelGroup(ch.Config)
			if err != nil {
				t.Fatal(err)
			}
			// The builder writes genesis configs (every version 0); a later
			// config differs from it only in the versions of what changed.
			want := proto.Clone(ch.Group).(*common.ConfigGroup)
			zeroVersions(want)
			compareGroups(t, "Channel", g, want)
		})
	}
	for _, name := range []string{"vectors-1.block", "vectors-2.block"} {
		b := readBlock(t, name)
		if IsConfigBlock(b) {
			t.Errorf("%s: IsConfigBlock = true", name)
		}
		if _, err := Parse(b); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: Parse = %v, want ErrConfig", name, err)
		}
	}
}

func TestParseOwnGenesis(t *testing.T) {
	ch0, err := Parse(readBlock(t, "genesis.block"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := ch0.Config
	cfg.ChannelID = "other"
	cfg.Batch = block.CutterConfig{MaxMessageCount: 500}
	b, err := GenesisBlock(cfg, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := cfg
	want.Batch = block.CutterConfig{MaxMessageCount: 500, AbsoluteMaxBytes: block.DefaultAbsoluteMaxBytes, PreferredMaxBytes: block.DefaultPreferredMaxBytes, BatchTimeout: block.DefaultBatchTimeout}
	if !reflect.DeepEqual(ch.Config, want) {
		t.Errorf("Parse(GenesisBlock(cfg)) = %+v\nwant %+v", ch.Config, want)
	}
}

func TestParseRejectsOtherConsensus(t *testing.T) {
	b := readBlock(t, "genesis.block")
	e, _ := block.ParseEnvelope(b.Data.Data[0])
	ce := new(common.ConfigEnvelope)
	if err := proto.Unmarshal(e.Data, ce); err != nil {
		t.Fatal(err)
	}
	ce.Config.ChannelGroup.Groups["Orderer"].Values["ConsensusType"].Value = mustMarshal(&orderer.ConsensusType{Type: "BFT"})
	pl := new(common.Payload)
	if err := proto.Unmarshal(e.Payload, pl); err != nil {
		t.Fatal(err)
	}
	pl.Data = mustMarshal(ce)
	b2 := block.New(0, nil, [][]byte{mustMarshal(&common.Envelope{Payload: mustMarshal(pl)})})
	if _, err := Parse(b2); !errors.Is(err, ErrUnsupported) {
		t.Errorf("BFT channel: %v, want ErrUnsupported", err)
	}
}

// The CONFIG_UPDATE inside config-update.block is signed by the orderer org
// admin over SignatureHeader ‖ ConfigUpdate, low-S.
func TestConfigUpdateSignatures(t *testing.T) {
	b := readBlock(t, "config-update.block")
	e, err := block.ParseEnvelope(b.Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	ce := new(common.ConfigEnvelope)
	if err := proto.Unmarshal(e.Data, ce); err != nil {
		t.Fatal(err)
	}
	upd, err := block.ParseEnvelope(mustMarshal(ce.LastUpdate))
	if err != nil {
		t.Fatal(err)
	}
	if upd.Type() != common.HeaderType_CONFIG_UPDATE {
		t.Fatalf("last update type %s", upd.Type())
	}
	cue := new(common.ConfigUpdateEnvelope)
	if err := proto.Unmarshal(upd.Data, cue); err != nil {
		t.Fatal(err)
	}
	sds, err := ConfigUpdateSignatures(cue)
	if err != nil || len(sds) != 1 {
		t.Fatalf("%d signatures, %v", len(sds), err)
	}
	mspID, cert, err := block.CreatorCertificate(sds[0].Identity)
	if err != nil {
		t.Fatal(err)
	}
	if mspID != "OrdererMSP" || cert.Subject.CommonName != "Admin@example.com" {
		t.Errorf("signer %s of %s", cert.Subject, mspID)
	}
	if err := block.VerifyCreatorSignature(sds[0].Identity, sds[0].Data, sds[0].Signature); err != nil {
		t.Errorf("admin signature: %v", err)
	}
	cue.ConfigUpdate[len(cue.ConfigUpdate)-1] ^= 1
	sds, _ = ConfigUpdateSignatures(cue)
	if err := block.VerifyCreatorSignature(sds[0].Identity, sds[0].Data, sds[0].Signature); !errors.Is(err, block.ErrBadSignature) {
		t.Errorf("tampered update: %v, want ErrBadSignature", err)
	}
}

// FuzzParse: config block parsing never panics, and what it accepts rebuilds.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"genesis.block", "vectors-0.block", "config-update.block"} {
		raw, err := os.ReadFile("../testdata/fabric-2.5.16/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := block.Unmarshal(raw)
		if err != nil {
			return
		}
		IsConfigBlock(b)
		ch, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrConfig) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Parse error %v wraps no sentinel", err)
			}
			return
		}
		if _, err := ChannelGroup(ch.Config); err != nil {
			t.Fatalf("parsed config does not rebuild: %v", err)
		}
		// Evaluating identities against any accepted config never panics.
		for _, o := range ch.Config.OrdererOrgs {
			ch.CheckBlockSigner(o.MSPID, fuzzSigner, time.Now())
			ch.Role(o.MSPID, fuzzSigner)
		}
	})
}

// fuzzSigner is the stock orderer's signing certificate of the vectors.
var fuzzSigner = func() *x509.Certificate {
	raw, err := os.ReadFile("../testdata/fabric-2.5.16/orderer-signcert.pem")
	if err != nil {
		panic(err)
	}
	b, _ := pem.Decode(raw)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		panic(err)
	}
	return c
}()

func zeroVersions(g *common.ConfigGroup) {
	g.Version = 0
	for _, v := range g.Values {
		v.Version = 0
	}
	for _, p := range g.Policies {
		p.Version = 0
	}
	for _, sub := range g.Groups {
		zeroVersions(sub)
	}
}

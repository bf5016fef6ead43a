package channelconfig

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer/etcdraft"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

// ErrUnsupported: a channel configuration this node cannot run (another
// consensus type, an MSP type other than X.509).
var ErrUnsupported = errors.New("unsupported channel configuration")

// Channel is a parsed channel configuration block.
type Channel struct {
	// Config holds what this package's builder takes (orgs sorted by group name).
	Config Config
	// Sequence is the config sequence (0 for a genesis block).
	Sequence uint64
	// Capabilities by level: "Channel", "Orderer", "Application".
	Capabilities map[string][]string
	// Group is the raw channel group, for policy evaluation.
	Group *common.ConfigGroup
}

// IsConfigBlock reports whether b holds a single CONFIG envelope.
func IsConfigBlock(b *common.Block) bool {
	if len(b.GetData().GetData()) != 1 {
		return false
	}
	e, err := block.ParseEnvelope(b.Data.Data[0])
	return err == nil && e.Type() == common.HeaderType_CONFIG
}

// Parse decodes a config block (a genesis block from configtxgen or this
// package, or a later config block) into the channel's configuration, so a
// node can join a channel from it. Only etcdraft channels are supported.
func Parse(b *common.Block) (*Channel, error) {
	channelID, cfg, err := BlockConfig(b)
	if err != nil {
		return nil, err
	}
	return ParseConfig(channelID, cfg)
}

// BlockConfig returns the channel id and the raw Config of a config block:
// what NextFromPolicy takes as the config in force.
func BlockConfig(b *common.Block) (channelID string, cfg *common.Config, err error) {
	if len(b.GetData().GetData()) != 1 {
		return "", nil, fmt.Errorf("%w: a config block holds exactly one envelope, this one %d", ErrConfig, len(b.GetData().GetData()))
	}
	e, err := block.ParseEnvelope(b.Data.Data[0])
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if e.Type() != common.HeaderType_CONFIG {
		return "", nil, fmt.Errorf("%w: block %d is not a config block (envelope type %s)", ErrConfig, b.GetHeader().GetNumber(), e.Type())
	}
	ce := new(common.ConfigEnvelope)
	if err := proto.Unmarshal(e.Data, ce); err != nil {
		return "", nil, fmt.Errorf("%w: config envelope: %v", ErrConfig, err)
	}
	if ce.GetConfig().GetChannelGroup() == nil {
		return "", nil, fmt.Errorf("%w: block %d: config has no channel group", ErrConfig, b.GetHeader().GetNumber())
	}
	return e.ChannelID(), ce.Config, nil
}

// ParseConfig decodes the config of channel channelID, as carried by a
// config block's ConfigEnvelope, like Parse.
func ParseConfig(channelID string, cfg *common.Config) (*Channel, error) {
	root := cfg.GetChannelGroup()
	if root == nil {
		return nil, fmt.Errorf("%w: config has no channel group", ErrConfig)
	}
	ch := &Channel{Sequence: cfg.GetSequence(), Group: root, Capabilities: map[string][]string{}}
	c := &ch.Config
	c.ChannelID = channelID
	var err error

	caps := func(level string, g *common.ConfigGroup) error {
		v, ok := g.GetValues()["Capabilities"]
		if !ok {
			return nil
		}
		cp := new(common.Capabilities)
		if err := proto.Unmarshal(v.Value, cp); err != nil {
			return fmt.Errorf("%w: %s capabilities: %v", ErrConfig, level, err)
		}
		for k := range cp.Capabilities {
			ch.Capabilities[level] = append(ch.Capabilities[level], k)
		}
		sort.Strings(ch.Capabilities[level])
		return nil
	}
	if err := caps("Channel", root); err != nil {
		return nil, err
	}
	ord := root.Groups["Orderer"]
	if ord == nil {
		return nil, fmt.Errorf("%w: channel %q has no Orderer group", ErrConfig, c.ChannelID)
	}
	if err := caps("Orderer", ord); err != nil {
		return nil, err
	}
	if c.OrdererOrgs, err = parseOrgs(ord); err != nil {
		return nil, err
	}
	if app := root.Groups["Application"]; app != nil {
		if err := caps("Application", app); err != nil {
			return nil, err
		}
		if c.ApplicationOrgs, err = parseOrgs(app); err != nil {
			return nil, err
		}
	}
	bs, bt := new(orderer.BatchSize), new(orderer.BatchTimeout)
	if err := unmarshalValue(ord, "BatchSize", bs); err != nil {
		return nil, err
	}
	if err := unmarshalValue(ord, "BatchTimeout", bt); err != nil {
		return nil, err
	}
	if c.Batch, err = block.CutterConfigFromFabric(bs, bt); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	ct := new(orderer.ConsensusType)
	if err := unmarshalValue(ord, "ConsensusType", ct); err != nil {
		return nil, err
	}
	if ct.Type != "etcdraft" {
		return nil, fmt.Errorf("%w: consensus type %q; memberd orders with etcdraft", ErrUnsupported, ct.Type)
	}
	md := new(etcdraft.ConfigMetadata)
	if err := proto.Unmarshal(ct.Metadata, md); err != nil {
		return nil, fmt.Errorf("%w: etcdraft metadata: %v", ErrConfig, err)
	}
	for _, cs := range md.Consenters {
		c.Consenters = append(c.Consenters, Consenter{Host: cs.Host, Port: cs.Port, ClientTLSCert: cs.ClientTlsCert, ServerTLSCert: cs.ServerTlsCert})
	}
	if o := md.Options; o != nil {
		tick, err := time.ParseDuration(o.TickInterval)
		if err != nil || tick <= 0 {
			return nil, fmt.Errorf("%w: etcdraft tick interval %q", ErrConfig, o.TickInterval)
		}
		c.Raft = RaftOptions{TickInterval: tick, ElectionTick: o.ElectionTick, HeartbeatTick: o.HeartbeatTick, MaxInflightBlocks: o.MaxInflightBlocks, SnapshotIntervalSize: o.SnapshotIntervalSize}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return ch, nil
}

func unmarshalValue(g *common.ConfigGroup, key string, m proto.Message) error {
	v, ok := g.GetValues()[key]
	if !ok {
		return fmt.Errorf("%w: Orderer group has no %s value", ErrConfig, key)
	}
	if err := proto.Unmarshal(v.Value, m); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrConfig, key, err)
	}
	return nil
}

func parseOrgs(g *common.ConfigGroup) ([]Org, error) {
	names := make([]string, 0, len(g.Groups))
	for k := range g.Groups {
		names = append(names, k)
	}
	sort.Strings(names)
	var orgs []Org
	for _, name := range names {
		og := g.Groups[name]
		v, ok := og.GetValues()["MSP"]
		if !ok {
			return nil, fmt.Errorf("%w: organisation %q has no MSP value", ErrConfig, name)
		}
		mc := new(msp.MSPConfig)
		if err := proto.Unmarshal(v.Value, mc); err != nil {
			return nil, fmt.Errorf("%w: organisation %q MSP: %v", ErrConfig, name, err)
		}
		if mc.Type != 0 {
			return nil, fmt.Errorf("%w: organisation %q has MSP type %d; only X.509 (0) is supported", ErrUnsupported, name, mc.Type)
		}
		fc := new(msp.FabricMSPConfig)
		if err := proto.Unmarshal(mc.Config, fc); err != nil {
			return nil, fmt.Errorf("%w: organisation %q MSP config: %v", ErrConfig, name, err)
		}
		o := Org{Name: name, MSPID: fc.Name, RootCerts: fc.RootCerts, IntermediateCerts: fc.IntermediateCerts, TLSRootCerts: fc.TlsRootCerts,
			CRLs: fc.RevocationList}
		if w, ok := og.GetPolicies()["Writers"]; ok && isRejectAll(w.GetPolicy()) {
			o.ReadOnly = true
		}
		if name == fc.Name {
			o.Name = ""
		}
		if ep, ok := og.GetValues()["Endpoints"]; ok {
			oa := new(common.OrdererAddresses)
			if err := proto.Unmarshal(ep.Value, oa); err != nil {
				return nil, fmt.Errorf("%w: organisation %q endpoints: %v", ErrConfig, name, err)
			}
			o.OrdererEndpoints = oa.Addresses
		}
		orgs = append(orgs, o)
	}
	return orgs, nil
}

// ConfigUpdateSignatures returns the admin signatures of a CONFIG_UPDATE
// (a ConfigUpdateEnvelope, e.g. the LastUpdate of a config block) as
// SignedData over SignatureHeader ‖ ConfigUpdate, as Fabric's
// ConfigUpdateEnvelope.AsSignedData, ready for a policy check.
func ConfigUpdateSignatures(cue *common.ConfigUpdateEnvelope) ([]block.SignedData, error) {
	out := make([]block.SignedData, 0, len(cue.GetSignatures()))
	for i, cs := range cue.GetSignatures() {
		sh := new(common.SignatureHeader)
		if err := proto.Unmarshal(cs.SignatureHeader, sh); err != nil {
			return nil, fmt.Errorf("%w: config update signature %d header: %v", ErrConfig, i, err)
		}
		data := make([]byte, 0, len(cs.SignatureHeader)+len(cue.ConfigUpdate))
		data = append(append(data, cs.SignatureHeader...), cue.ConfigUpdate...)
		out = append(out, block.SignedData{Identity: sh.Creator, Data: data, Signature: cs.Signature})
	}
	return out, nil
}

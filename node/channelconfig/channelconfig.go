// Package channelconfig builds a Hyperledger Fabric channel configuration
// (common.ConfigGroup) and its genesis block from a list of organisations,
// with the same groups, values and policies that Fabric 2.5's configtxgen
// writes for the sample "etcdraft, no system channel" profile:
//
//	Channel          values HashingAlgorithm, BlockDataHashingStructure, Capabilities{V2_0}
//	                 policies Readers ANY, Writers ANY, Admins MAJORITY (implicit meta)
//	  Orderer        values BatchSize, BatchTimeout, Capabilities{V2_0}, ChannelRestrictions,
//	                        ConsensusType{etcdraft, consenters, options}
//	                 policies Readers ANY, Writers ANY, Admins MAJORITY, BlockValidation ANY Writers
//	    <org>        values MSP, Endpoints; policies Readers/Writers OR(member), Admins OR(admin)
//	  Application    values Capabilities{V2_5}
//	                 policies Readers ANY, Writers ANY, Admins MAJORITY,
//	                          Endorsement MAJORITY, LifecycleEndorsement MAJORITY
//	    <org>        values MSP; policies Readers OR(admin,peer,client),
//	                 Writers OR(admin,client) (a ReadOnly org: reject-all),
//	                 Admins OR(admin), Endorsement OR(peer)
//
// Every MSP enables NodeOUs (client, peer, admin, orderer) against its first
// root CA, as cryptogen-made MSPs do, and carries the org's CRLs as its
// revocation_list. All mod_policy values are "Admins".
// The package is pure: time and randomness are inputs.
package channelconfig

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"regexp"
	"strconv"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer/etcdraft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/memberd/memberd/node/block"
)

// ErrConfig: the channel configuration input is invalid.
var ErrConfig = errors.New("invalid channel configuration")

// Org is one organisation (for memberd, one member) of the channel.
type Org struct {
	// Name is the org's group key in the channel config. Default: MSPID.
	// (configtxgen's samples use e.g. Name "OrdererOrg" for MSPID "OrdererMSP".)
	Name string
	// MSPID names the organisation's MSP, e.g. "MemberA". Required, unique.
	MSPID string
	// RootCerts are the PEM CA certificates of the member CA. At least one;
	// the first also anchors the NodeOU identifiers.
	RootCerts [][]byte
	// IntermediateCerts are optional PEM intermediate CA certificates.
	IntermediateCerts [][]byte
	// TLSRootCerts are the PEM CA certificates of the org's TLS CA.
	TLSRootCerts [][]byte
	// OrdererEndpoints ("host:port") of the org's ordering nodes; written as
	// the Endpoints value of its Orderer group entry.
	OrdererEndpoints []string
	// CRLs are PEM X.509 CRLs ("X509 CRL") of the org's CAs, written as its
	// MSP's revocation_list: a stock Fabric MSP refuses a certificate whose
	// issuer's CRL lists it. Empty: none.
	CRLs [][]byte
	// ReadOnly, for an Application org, gives it a Writers policy that no
	// signature satisfies (Fabric's reject-all: 1 out of no rules), so
	// stock peers refuse its clients' proposals (the default ACL of
	// peer/Propose is /Channel/Application/Writers). The zero value keeps
	// Writers OR(admin, client). Not read for Orderer orgs.
	ReadOnly bool
}

func (o Org) name() string {
	if o.Name != "" {
		return o.Name
	}
	return o.MSPID
}

// Consenter is one etcdraft consenter.
type Consenter struct {
	Host          string
	Port          uint32
	ClientTLSCert []byte // PEM
	ServerTLSCert []byte // PEM
}

// RaftOptions are etcdraft's options; zero fields take configtxgen's defaults.
type RaftOptions struct {
	TickInterval         time.Duration // default 500ms
	ElectionTick         uint32        // default 10
	HeartbeatTick        uint32        // default 1
	MaxInflightBlocks    uint32        // default 5
	SnapshotIntervalSize uint32        // bytes, default 16 MiB
}

func (o RaftOptions) proto() *etcdraft.Options {
	def := func(v, d uint32) uint32 {
		if v == 0 {
			return d
		}
		return v
	}
	tick := o.TickInterval
	if tick == 0 {
		tick = 500 * time.Millisecond
	}
	return &etcdraft.Options{
		TickInterval:         tick.String(),
		ElectionTick:         def(o.ElectionTick, 10),
		HeartbeatTick:        def(o.HeartbeatTick, 1),
		MaxInflightBlocks:    def(o.MaxInflightBlocks, 5),
		SnapshotIntervalSize: def(o.SnapshotIntervalSize, 16<<20),
	}
}

// Config describes a channel.
type Config struct {
	// ChannelID: lower case letters, digits, '.' and '-', starting with a
	// letter, under 250 characters (Fabric's rule).
	ChannelID string
	// OrdererOrgs are the organisations in the Orderer group (those that run
	// consenters); ApplicationOrgs those in the Application group. A memberd
	// member is usually in both.
	OrdererOrgs     []Org
	ApplicationOrgs []Org
	// Consenters of the etcdraft cluster. At least one.
	Consenters []Consenter
	// Batch is the Orderer BatchSize/BatchTimeout (zero fields: defaults of block.CutterConfig).
	Batch block.CutterConfig
	Raft  RaftOptions
}

var channelIDRe = regexp.MustCompile(`^[a-z][a-z0-9.-]*$`)

// Validate reports the first problem in c, naming the field at fault.
func (c Config) Validate() error {
	if len(c.ChannelID) >= 250 || !channelIDRe.MatchString(c.ChannelID) {
		return fmt.Errorf("%w: channel id %q: use lower case letters, digits, '.' and '-', starting with a letter", ErrConfig, c.ChannelID)
	}
	if len(c.OrdererOrgs) == 0 {
		return fmt.Errorf("%w: channel %q has no orderer organisation", ErrConfig, c.ChannelID)
	}
	if len(c.Consenters) == 0 {
		return fmt.Errorf("%w: channel %q has no consenter", ErrConfig, c.ChannelID)
	}
	for _, set := range []struct {
		name string
		orgs []Org
	}{{"orderer", c.OrdererOrgs}, {"application", c.ApplicationOrgs}} {
		seen := map[string]bool{}
		for i, o := range set.orgs {
			if o.MSPID == "" {
				return fmt.Errorf("%w: %s organisation %d has no MSP id", ErrConfig, set.name, i)
			}
			if seen[o.name()] || seen["msp:"+o.MSPID] {
				return fmt.Errorf("%w: %s organisation %q (MSP %q) listed twice", ErrConfig, set.name, o.name(), o.MSPID)
			}
			seen[o.name()], seen["msp:"+o.MSPID] = true, true
			if len(o.RootCerts) == 0 {
				return fmt.Errorf("%w: organisation %q has no root CA certificate", ErrConfig, o.MSPID)
			}
			for _, group := range [][][]byte{o.RootCerts, o.IntermediateCerts, o.TLSRootCerts} {
				for _, p := range group {
					if _, err := parsePEMCert(p); err != nil {
						return fmt.Errorf("%w: organisation %q: %v", ErrConfig, o.MSPID, err)
					}
				}
			}
			for i, p := range o.CRLs {
				if _, err := parsePEMCRL(p); err != nil {
					return fmt.Errorf("%w: organisation %q CRL %d: %v", ErrConfig, o.MSPID, i, err)
				}
			}
			for _, ep := range o.OrdererEndpoints {
				if _, _, err := splitHostPort(ep); err != nil {
					return fmt.Errorf("%w: organisation %q orderer endpoint %q: %v", ErrConfig, o.MSPID, ep, err)
				}
			}
		}
	}
	for i, cs := range c.Consenters {
		if cs.Host == "" || cs.Port == 0 || cs.Port > math.MaxUint16 {
			return fmt.Errorf("%w: consenter %d: host %q port %d", ErrConfig, i, cs.Host, cs.Port)
		}
		for _, p := range [][]byte{cs.ClientTLSCert, cs.ServerTLSCert} {
			if _, err := parsePEMCert(p); err != nil {
				return fmt.Errorf("%w: consenter %s:%d TLS certificate: %v", ErrConfig, cs.Host, cs.Port, err)
			}
		}
	}
	if err := c.Batch.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return nil
}

func parsePEMCert(p []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func parsePEMCRL(p []byte) (*x509.RevocationList, error) {
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "X509 CRL" {
		return nil, errors.New("not a PEM X509 CRL")
	}
	return x509.ParseRevocationList(b.Bytes)
}

func splitHostPort(ep string) (string, uint16, error) {
	h, p, err := net.SplitHostPort(ep)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 || h == "" {
		return "", 0, errors.New("want host:port")
	}
	return h, uint16(n), nil
}

// Capabilities written by this builder.
const (
	ChannelCapability     = "V2_0"
	OrdererCapability     = "V2_0"
	ApplicationCapability = "V2_5"
)

// ChannelGroup builds the channel's root config group.
func ChannelGroup(c Config) (*common.ConfigGroup, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	bs := c.Batch
	cut, _ := block.NewCutter(bs) // validated above; applies defaults
	bs = cut.Config()

	root := newGroup()
	root.Values["HashingAlgorithm"] = value(&common.HashingAlgorithm{Name: "SHA256"})
	root.Values["BlockDataHashingStructure"] = value(&common.BlockDataHashingStructure{Width: math.MaxUint32})
	root.Values["Capabilities"] = value(capabilities(ChannelCapability))
	addImplicitMeta(root, "Readers", "Readers", common.ImplicitMetaPolicy_ANY)
	addImplicitMeta(root, "Writers", "Writers", common.ImplicitMetaPolicy_ANY)
	addImplicitMeta(root, "Admins", "Admins", common.ImplicitMetaPolicy_MAJORITY)

	ord := newGroup()
	ord.Values["BatchSize"] = value(&orderer.BatchSize{MaxMessageCount: bs.MaxMessageCount, AbsoluteMaxBytes: bs.AbsoluteMaxBytes, PreferredMaxBytes: bs.PreferredMaxBytes})
	ord.Values["BatchTimeout"] = value(&orderer.BatchTimeout{Timeout: bs.BatchTimeout.String()})
	ord.Values["Capabilities"] = value(capabilities(OrdererCapability))
	ord.Values["ChannelRestrictions"] = value(&orderer.ChannelRestrictions{})
	consenters := make([]*etcdraft.Consenter, len(c.Consenters))
	for i, cs := range c.Consenters {
		consenters[i] = &etcdraft.Consenter{Host: cs.Host, Port: cs.Port, ClientTlsCert: cs.ClientTLSCert, ServerTlsCert: cs.ServerTLSCert}
	}
	md, err := marshal(&etcdraft.ConfigMetadata{Consenters: consenters, Options: c.Raft.proto()})
	if err != nil {
		return nil, err
	}
	ord.Values["ConsensusType"] = value(&orderer.ConsensusType{Type: "etcdraft", Metadata: md, State: orderer.ConsensusType_STATE_NORMAL})
	addImplicitMeta(ord, "Readers", "Readers", common.ImplicitMetaPolicy_ANY)
	addImplicitMeta(ord, "Writers", "Writers", common.ImplicitMetaPolicy_ANY)
	addImplicitMeta(ord, "Admins", "Admins", common.ImplicitMetaPolicy_MAJORITY)
	addImplicitMeta(ord, "BlockValidation", "Writers", common.ImplicitMetaPolicy_ANY)
	for _, o := range c.OrdererOrgs {
		g := orgGroup(o)
		if len(o.OrdererEndpoints) > 0 {
			g.Values["Endpoints"] = value(&common.OrdererAddresses{Addresses: o.OrdererEndpoints})
		}
		addSignature(g, "Readers", o.MSPID, msp.MSPRole_MEMBER)
		addSignature(g, "Writers", o.MSPID, msp.MSPRole_MEMBER)
		addSignature(g, "Admins", o.MSPID, msp.MSPRole_ADMIN)
		ord.Groups[o.name()] = g
	}
	root.Groups["Orderer"] = ord

	app := newGroup()
	app.Values["Capabilities"] = value(capabilities(ApplicationCapability))
	addImplicitMeta(app, "Readers", "Readers", common.ImplicitMetaPolicy_ANY)
	addImplicitMeta(app, "Writers", "Writers", common.ImplicitMetaPolicy_ANY)
	addImplicitMeta(app, "Admins", "Admins", common.ImplicitMetaPolicy_MAJORITY)
	addImplicitMeta(app, "Endorsement", "Endorsement", common.ImplicitMetaPolicy_MAJORITY)
	addImplicitMeta(app, "LifecycleEndorsement", "Endorsement", common.ImplicitMetaPolicy_MAJORITY)
	for _, o := range c.ApplicationOrgs {
		g := orgGroup(o)
		addSignature(g, "Readers", o.MSPID, msp.MSPRole_ADMIN, msp.MSPRole_PEER, msp.MSPRole_CLIENT)
		if o.ReadOnly {
			addRejectAll(g, "Writers")
		} else {
			addSignature(g, "Writers", o.MSPID, msp.MSPRole_ADMIN, msp.MSPRole_CLIENT)
		}
		addSignature(g, "Admins", o.MSPID, msp.MSPRole_ADMIN)
		addSignature(g, "Endorsement", o.MSPID, msp.MSPRole_PEER)
		app.Groups[o.name()] = g
	}
	root.Groups["Application"] = app
	return root, nil
}

// GenesisBlock builds block 0 of the channel the way configtxgen does: one
// CONFIG envelope (channel header type CONFIG, version 1, timestamp now,
// TxId bound to a fresh 24-byte nonce and an empty creator, no signature)
// carrying ConfigEnvelope{Config{Sequence 0, ChannelGroup}}, and a
// SIGNATURES slot holding OrdererBlockMetadata{LastConfig{0}} unsigned.
func GenesisBlock(c Config, now time.Time, rand io.Reader) (*common.Block, error) {
	root, err := ChannelGroup(c)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, block.NonceSize)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("genesis nonce: %w", err)
	}
	cfgEnv, err := marshal(&common.ConfigEnvelope{Config: &common.Config{ChannelGroup: root}})
	if err != nil {
		return nil, err
	}
	ts := timestamppb.New(now.Truncate(time.Second))
	ch, err := marshal(&common.ChannelHeader{Type: int32(common.HeaderType_CONFIG), Version: 1, Timestamp: ts, ChannelId: c.ChannelID, TxId: block.ComputeTxID(nonce, nil)})
	if err != nil {
		return nil, err
	}
	sh, err := marshal(&common.SignatureHeader{Nonce: nonce})
	if err != nil {
		return nil, err
	}
	payload, err := marshal(&common.Payload{Header: &common.Header{ChannelHeader: ch, SignatureHeader: sh}, Data: cfgEnv})
	if err != nil {
		return nil, err
	}
	env, err := marshal(&common.Envelope{Payload: payload})
	if err != nil {
		return nil, err
	}
	b := block.New(0, nil, [][]byte{env})
	obm, err := marshal(&common.OrdererBlockMetadata{LastConfig: &common.LastConfig{Index: 0}})
	if err != nil {
		return nil, err
	}
	sigs, err := marshal(&common.Metadata{Value: obm})
	if err != nil {
		return nil, err
	}
	b.Metadata.Metadata[common.BlockMetadataIndex_SIGNATURES] = sigs
	return b, nil
}

func newGroup() *common.ConfigGroup {
	return &common.ConfigGroup{
		Groups:    map[string]*common.ConfigGroup{},
		Values:    map[string]*common.ConfigValue{},
		Policies:  map[string]*common.ConfigPolicy{},
		ModPolicy: "Admins",
	}
}

// The NodeOU identifiers every MSP of a memberd channel config enables: a
// certificate's subject OU names its role (memberd hsm csr --ou ...).
const (
	ClientOU  = "client"
	PeerOU    = "peer"
	AdminOU   = "admin"
	OrdererOU = "orderer"
)

func orgGroup(o Org) *common.ConfigGroup {
	g := newGroup()
	ou := func(name string) *msp.FabricOUIdentifier {
		return &msp.FabricOUIdentifier{Certificate: o.RootCerts[0], OrganizationalUnitIdentifier: name}
	}
	fc := &msp.FabricMSPConfig{
		Name:              o.MSPID,
		RootCerts:         o.RootCerts,
		IntermediateCerts: o.IntermediateCerts,
		CryptoConfig:      &msp.FabricCryptoConfig{SignatureHashFamily: "SHA2", IdentityIdentifierHashFunction: "SHA256"},
		TlsRootCerts:      o.TLSRootCerts,
		RevocationList:    o.CRLs,
		FabricNodeOus: &msp.FabricNodeOUs{
			Enable:              true,
			ClientOuIdentifier:  ou(ClientOU),
			PeerOuIdentifier:    ou(PeerOU),
			AdminOuIdentifier:   ou(AdminOU),
			OrdererOuIdentifier: ou(OrdererOU),
		},
	}
	g.Values["MSP"] = value(&msp.MSPConfig{Type: 0, Config: mustMarshal(fc)})
	return g
}

func capabilities(name string) *common.Capabilities {
	return &common.Capabilities{Capabilities: map[string]*common.Capability{name: {}}}
}

func value(m proto.Message) *common.ConfigValue {
	return &common.ConfigValue{Value: mustMarshal(m), ModPolicy: "Admins"}
}

func addImplicitMeta(g *common.ConfigGroup, name, sub string, rule common.ImplicitMetaPolicy_Rule) {
	g.Policies[name] = &common.ConfigPolicy{
		Policy:    &common.Policy{Type: int32(common.Policy_IMPLICIT_META), Value: mustMarshal(&common.ImplicitMetaPolicy{SubPolicy: sub, Rule: rule})},
		ModPolicy: "Admins",
	}
}

// addSignature adds a signature policy "1 of" the given roles of mspID.
func addSignature(g *common.ConfigGroup, name, mspID string, roles ...msp.MSPRole_MSPRoleType) {
	env := &common.SignaturePolicyEnvelope{Rule: &common.SignaturePolicy{Type: &common.SignaturePolicy_NOutOf_{NOutOf: &common.SignaturePolicy_NOutOf{N: 1}}}}
	for i, r := range roles {
		env.Identities = append(env.Identities, &msp.MSPPrincipal{
			PrincipalClassification: msp.MSPPrincipal_ROLE,
			Principal:               mustMarshal(&msp.MSPRole{MspIdentifier: mspID, Role: r}),
		})
		n := env.Rule.GetNOutOf()
		n.Rules = append(n.Rules, &common.SignaturePolicy{Type: &common.SignaturePolicy_SignedBy{SignedBy: int32(i)}})
	}
	g.Policies[name] = &common.ConfigPolicy{
		Policy:    &common.Policy{Type: int32(common.Policy_SIGNATURE), Value: mustMarshal(env)},
		ModPolicy: "Admins",
	}
}

// rejectAllPolicy is Fabric's policydsl.RejectAllPolicy: a signature
// policy "1 out of" no rules over no identities, which no set of
// signatures satisfies.
func rejectAllPolicy() *common.SignaturePolicyEnvelope {
	return &common.SignaturePolicyEnvelope{Rule: &common.SignaturePolicy{Type: &common.SignaturePolicy_NOutOf_{NOutOf: &common.SignaturePolicy_NOutOf{N: 1}}}}
}

// addRejectAll adds rejectAllPolicy under name.
func addRejectAll(g *common.ConfigGroup, name string) {
	g.Policies[name] = &common.ConfigPolicy{
		Policy:    &common.Policy{Type: int32(common.Policy_SIGNATURE), Value: mustMarshal(rejectAllPolicy())},
		ModPolicy: "Admins",
	}
}

// isRejectAll reports whether p is a signature policy no signer satisfies
// in the form rejectAllPolicy writes.
func isRejectAll(p *common.Policy) bool {
	if p.GetType() != int32(common.Policy_SIGNATURE) {
		return false
	}
	env := new(common.SignaturePolicyEnvelope)
	if proto.Unmarshal(p.GetValue(), env) != nil {
		return false
	}
	n := env.GetRule().GetNOutOf()
	return n != nil && n.N > int32(len(n.Rules))
}

var marshalOpts = proto.MarshalOptions{Deterministic: true}

func marshal(m proto.Message) ([]byte, error) {
	b, err := marshalOpts.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: marshal %T: %v", ErrConfig, m, err)
	}
	return b, nil
}

// mustMarshal is for messages built here from validated fields, which always encode.
func mustMarshal(m proto.Message) []byte {
	b, err := marshalOpts.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("channelconfig: marshal %T: %v", m, err))
	}
	return b
}

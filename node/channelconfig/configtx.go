package channelconfig

// CONFIG transactions: the envelope a Fabric orderer writes into a config
// block after a channel update, and the check every consenter runs on it.
//
// A stock Fabric 2.5 orderer answers a CONFIG_UPDATE envelope with
//
//	Envelope{Payload{Header{ChannelHeader{Type: CONFIG, ChannelId, Timestamp},
//	                        SignatureHeader{orderer identity, nonce}},
//	                 Data: ConfigEnvelope{Config: next config, LastUpdate: the CONFIG_UPDATE envelope}},
//	         Signature: by the orderer}
//
// (msgprocessor.StandardChannel.ProcessConfigUpdateMsg and
// protoutil.CreateSignedEnvelope: message version 0, epoch 0, no TxId) and
// cuts it as a block of its own. memberd has no client CONFIG_UPDATE: the
// leader writes LastUpdate itself, a CONFIG_UPDATE envelope carrying the
// ConfigUpdate derived from the policy (Next) and signed by the leader, with
// the admin signatures given (ConfigUpdateEnvelope.Signatures).

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// ErrConfigMismatch: a CONFIG transaction differs from the one this node
// derives from the same policy version.
var ErrConfigMismatch = errors.New("config transaction differs from the one derived from the policy")

var deterministic = proto.MarshalOptions{Deterministic: true}

// Signer is an identity that signs envelopes: an ECDSA crypto.Signer (an
// HSM key) and its marshalled msp.SerializedIdentity.
type Signer struct {
	Key      crypto.Signer
	Identity []byte
}

// envelope returns the envelope of type typ around data, signed by s.
func (s Signer) envelope(typ common.HeaderType, channelID string, data []byte, withTxID bool, now time.Time, rand io.Reader) ([]byte, error) {
	pub, ok := s.Key.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: envelope signer has a %T key; use an ECDSA key", block.ErrUnsupportedKey, s.Key.Public())
	}
	nonce := make([]byte, block.NonceSize)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("envelope nonce: %w", err)
	}
	chdr := &common.ChannelHeader{Type: int32(typ), ChannelId: channelID,
		Timestamp: &timestamppb.Timestamp{Seconds: now.Unix()}}
	if withTxID {
		chdr.TxId = block.ComputeTxID(nonce, s.Identity)
	}
	ch, err := marshal(chdr)
	if err != nil {
		return nil, err
	}
	sh, err := marshal(&common.SignatureHeader{Creator: s.Identity, Nonce: nonce})
	if err != nil {
		return nil, err
	}
	payload, err := marshal(&common.Payload{Header: &common.Header{ChannelHeader: ch, SignatureHeader: sh}, Data: data})
	if err != nil {
		return nil, err
	}
	sig, err := block.SignECDSA(s.Key, pub, payload, rand)
	if err != nil {
		return nil, err
	}
	return marshal(&common.Envelope{Payload: payload, Signature: sig})
}

// ConfigUpdateBytes returns u.ConfigUpdate as ConfigTransaction writes it
// into the ConfigUpdateEnvelope: what admins sign (SignConfigUpdate).
func (u *Update) ConfigUpdateBytes() ([]byte, error) {
	b, err := deterministic.Marshal(u.ConfigUpdate)
	if err != nil {
		return nil, fmt.Errorf("%w: config update: %v", ErrConfig, err)
	}
	return b, nil
}

// ConfigTransaction returns the CONFIG envelope that carries u: the
// ConfigEnvelope{Config: u.Config, LastUpdate} of a stock orderer, where
// LastUpdate is a CONFIG_UPDATE envelope holding u.ConfigUpdate with the
// admin signatures sigs (none: the ConfigUpdate is unsigned). Both
// envelopes are signed by s at time now.
func ConfigTransaction(u *Update, sigs []*common.ConfigSignature, s Signer, now time.Time, rand io.Reader) ([]byte, error) {
	cu, err := u.ConfigUpdateBytes()
	if err != nil {
		return nil, err
	}
	cue, err := deterministic.Marshal(&common.ConfigUpdateEnvelope{ConfigUpdate: cu, Signatures: sigs})
	if err != nil {
		return nil, fmt.Errorf("%w: config update envelope: %v", ErrConfig, err)
	}
	channelID := u.ConfigUpdate.GetChannelId()
	lastRaw, err := s.envelope(common.HeaderType_CONFIG_UPDATE, channelID, cue, true, now, rand)
	if err != nil {
		return nil, fmt.Errorf("config update envelope: %w", err)
	}
	last := new(common.Envelope)
	if err := proto.Unmarshal(lastRaw, last); err != nil {
		return nil, fmt.Errorf("%w: config update envelope: %v", ErrConfig, err)
	}
	ce, err := deterministic.Marshal(&common.ConfigEnvelope{Config: u.Config, LastUpdate: last})
	if err != nil {
		return nil, fmt.Errorf("%w: config envelope: %v", ErrConfig, err)
	}
	return s.envelope(common.HeaderType_CONFIG, channelID, ce, false, now, rand)
}

// ConfigTransactionOf returns the ConfigEnvelope of config block b and the
// ConfigUpdateEnvelope of its LastUpdate.
func ConfigTransactionOf(b *common.Block) (*common.ConfigEnvelope, *common.ConfigUpdateEnvelope, error) {
	channelID, _, err := BlockConfig(b)
	if err != nil {
		return nil, nil, err
	}
	e, _ := block.ParseEnvelope(b.Data.Data[0]) // BlockConfig parsed it
	ce := new(common.ConfigEnvelope)
	if err := proto.Unmarshal(e.Data, ce); err != nil {
		return nil, nil, fmt.Errorf("%w: config envelope: %v", ErrConfig, err)
	}
	if ce.LastUpdate == nil {
		return ce, nil, fmt.Errorf("%w: block %d: config envelope has no LastUpdate", ErrConfig, b.GetHeader().GetNumber())
	}
	raw, err := proto.Marshal(ce.LastUpdate)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: LastUpdate: %v", ErrConfig, err)
	}
	lu, err := block.ParseEnvelope(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: LastUpdate: %v", ErrConfig, err)
	}
	if lu.Type() != common.HeaderType_CONFIG_UPDATE || lu.ChannelID() != channelID {
		return nil, nil, fmt.Errorf("%w: block %d: LastUpdate is a %s envelope of channel %q, want CONFIG_UPDATE of %q",
			ErrConfig, b.GetHeader().GetNumber(), lu.Type(), lu.ChannelID(), channelID)
	}
	cue := new(common.ConfigUpdateEnvelope)
	if err := proto.Unmarshal(lu.Data, cue); err != nil {
		return nil, nil, fmt.Errorf("%w: config update envelope: %v", ErrConfig, err)
	}
	return ce, cue, nil
}

// CheckConfigBlock checks that config block b carries exactly the
// transaction of want (what this node derives with Next from the same
// config in force and policy version): the same Config and the same
// ConfigUpdate, byte for byte in deterministic encoding, and that every
// admin signature on it is a valid signature on that ConfigUpdate. The
// envelope signatures and timestamps are the proposer's and are not
// compared, nor is the set of admin signatures (the bundles of one
// version may carry different sets; stock peers judge whether they meet
// the channel's mod_policy).
func CheckConfigBlock(b *common.Block, want *Update) error {
	ce, cue, err := ConfigTransactionOf(b)
	if err != nil {
		return err
	}
	num := b.GetHeader().GetNumber()
	if id := want.ConfigUpdate.GetChannelId(); id != "" {
		if got, _, _ := BlockConfig(b); got != id {
			return fmt.Errorf("%w: block %d is of channel %q, want %q", ErrConfigMismatch, num, got, id)
		}
	}
	gotCfg, err := deterministic.Marshal(ce.Config)
	if err != nil {
		return fmt.Errorf("%w: block %d config: %v", ErrConfig, num, err)
	}
	wantCfg, err := deterministic.Marshal(want.Config)
	if err != nil {
		return fmt.Errorf("%w: derived config: %v", ErrConfig, err)
	}
	if !bytes.Equal(gotCfg, wantCfg) {
		return fmt.Errorf("%w: block %d: Config (sequence %d) is not the config derived from the policy (sequence %d)",
			ErrConfigMismatch, num, ce.GetConfig().GetSequence(), want.Config.GetSequence())
	}
	wantCU, err := deterministic.Marshal(want.ConfigUpdate)
	if err != nil {
		return fmt.Errorf("%w: derived config update: %v", ErrConfig, err)
	}
	if !bytes.Equal(cue.ConfigUpdate, wantCU) {
		return fmt.Errorf("%w: block %d: LastUpdate's ConfigUpdate is not the delta derived from the policy", ErrConfigMismatch, num)
	}
	for i, cs := range cue.Signatures {
		if err := checkConfigSignature(cue.ConfigUpdate, cs); err != nil {
			return fmt.Errorf("block %d: admin signature %d: %w", num, i, err)
		}
	}
	return nil
}

// SignConfigUpdate returns s's signature on u's ConfigUpdate as Fabric's
// 'peer channel signconfigtx' makes it: a marshalled common.ConfigSignature
// whose signature covers its SignatureHeader{Creator: s.Identity, Nonce}
// followed by u.ConfigUpdateBytes. For a stock peer to count it, s.Identity
// must be an admin of its org's MSP (a certificate with OU=admin issued by
// the member CA).
func SignConfigUpdate(u *Update, s Signer, rand io.Reader) ([]byte, error) {
	pub, ok := s.Key.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: config update signer has a %T key; use an ECDSA key", block.ErrUnsupportedKey, s.Key.Public())
	}
	cub, err := u.ConfigUpdateBytes()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, block.NonceSize)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("config signature nonce: %w", err)
	}
	sh, err := marshal(&common.SignatureHeader{Creator: s.Identity, Nonce: nonce})
	if err != nil {
		return nil, err
	}
	sig, err := block.SignECDSA(s.Key, pub, append(bytes.Clone(sh), cub...), rand)
	if err != nil {
		return nil, err
	}
	return deterministic.Marshal(&common.ConfigSignature{SignatureHeader: sh, Signature: sig})
}

// ConfigSignatures returns those of raws (marshalled ConfigSignatures) that
// are valid signatures on configUpdate (the bytes a ConfigUpdateEnvelope
// carries), in order, and why each other one is not. Whether the signer
// is an admin of its org is left to the channel's policies.
func ConfigSignatures(configUpdate []byte, raws [][]byte) (valid []*common.ConfigSignature, invalid []error) {
	for i, raw := range raws {
		cs := new(common.ConfigSignature)
		if err := proto.Unmarshal(raw, cs); err != nil {
			invalid = append(invalid, fmt.Errorf("config signature %d: %w: %v", i, ErrConfig, err))
			continue
		}
		if err := checkConfigSignature(configUpdate, cs); err != nil {
			invalid = append(invalid, fmt.Errorf("config signature %d: %w", i, err))
			continue
		}
		valid = append(valid, cs)
	}
	return valid, invalid
}

func checkConfigSignature(configUpdate []byte, cs *common.ConfigSignature) error {
	sh := new(common.SignatureHeader)
	if err := proto.Unmarshal(cs.GetSignatureHeader(), sh); err != nil {
		return fmt.Errorf("%w: signature header: %v", ErrConfig, err)
	}
	data := append(bytes.Clone(cs.GetSignatureHeader()), configUpdate...)
	if err := block.VerifyCreatorSignature(sh.GetCreator(), data, cs.GetSignature()); err != nil {
		return fmt.Errorf("%w: not a signature on this config update: %w", ErrConfigMismatch, err)
	}
	return nil
}

// SignPolicyVersion is an admin's Fabric signature for policy version p:
// on the ConfigUpdate that p derives from the config in force (the Config
// of configBlock, the channel's last config block, e.g. from 'peer channel
// fetch config'), made with key and adminCertPEM, the admin's certificate
// (OU=admin, issued by the member CA of MSP mspID) for that key. It
// returns the marshalled ConfigSignature for the bundle's #cfgsig line, or
// an error wrapping ErrNoChange when p changes nothing in the channel.
func SignPolicyVersion(configBlock *common.Block, p *policy.Policy, key crypto.Signer, mspID string, adminCertPEM []byte, rand io.Reader) ([]byte, error) {
	channelID, cfg, err := BlockConfig(configBlock)
	if err != nil {
		return nil, err
	}
	u, err := NextFromPolicy(cfg, channelID, p, nil)
	if err != nil {
		return nil, err
	}
	cert, err := parsePEMCert(adminCertPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: admin certificate: %v", ErrConfig, err)
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("%w: the admin certificate (CN %q) is not for this key: give the certificate the member CA issued for this key with OU=admin",
			ErrConfig, cert.Subject.CommonName)
	}
	id, err := marshal(&msp.SerializedIdentity{Mspid: mspID, IdBytes: adminCertPEM})
	if err != nil {
		return nil, err
	}
	return SignConfigUpdate(u, Signer{Key: key, Identity: id}, rand)
}

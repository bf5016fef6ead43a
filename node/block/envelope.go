package block

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Admission errors (besides ErrMalformed, ErrBadSignature and ErrHighS).
var (
	// ErrTooLarge: an envelope exceeds the channel's AbsoluteMaxBytes.
	ErrTooLarge = errors.New("envelope too large")
	// ErrWrongChannel: an envelope names another channel.
	ErrWrongChannel = errors.New("envelope for another channel")
	// ErrHeaderType: an envelope's header type is not accepted here.
	ErrHeaderType = errors.New("envelope header type not accepted")
	// ErrTxID: an envelope's TxId is not hex(SHA-256(nonce ‖ creator)).
	ErrTxID = errors.New("envelope transaction id mismatch")
	// ErrNoCreator: an envelope has no creator identity.
	ErrNoCreator = errors.New("envelope has no creator")
)

// Envelope is a parsed Fabric common.Envelope. Raw is the exact input; the
// other byte fields are sub-slices of it or of the decoded messages.
type Envelope struct {
	Raw             []byte
	Payload         []byte // Envelope.Payload: the signed bytes
	Signature       []byte // Envelope.Signature
	Data            []byte // Payload.Data
	ChannelHeader   *common.ChannelHeader
	SignatureHeader *common.SignatureHeader
	// Creator is SignatureHeader.Creator decoded; nil when the creator is empty
	// (e.g. the CONFIG envelope of a configtxgen genesis block).
	Creator *msp.SerializedIdentity
}

// ParseEnvelope decodes raw as common.Envelope → Payload → Header →
// ChannelHeader and SignatureHeader (and the creator, when present).
// It checks structure only; see Admit for the full admission checks.
func ParseEnvelope(raw []byte) (*Envelope, error) {
	env := new(common.Envelope)
	if err := proto.Unmarshal(raw, env); err != nil {
		return nil, fmt.Errorf("%w: envelope: %v", ErrMalformed, err)
	}
	if len(env.Payload) == 0 {
		return nil, fmt.Errorf("%w: envelope has no payload", ErrMalformed)
	}
	pl := new(common.Payload)
	if err := proto.Unmarshal(env.Payload, pl); err != nil {
		return nil, fmt.Errorf("%w: envelope payload: %v", ErrMalformed, err)
	}
	if pl.Header == nil {
		return nil, fmt.Errorf("%w: envelope payload has no header", ErrMalformed)
	}
	ch := new(common.ChannelHeader)
	if err := proto.Unmarshal(pl.Header.ChannelHeader, ch); err != nil {
		return nil, fmt.Errorf("%w: channel header: %v", ErrMalformed, err)
	}
	sh := new(common.SignatureHeader)
	if err := proto.Unmarshal(pl.Header.SignatureHeader, sh); err != nil {
		return nil, fmt.Errorf("%w: signature header: %v", ErrMalformed, err)
	}
	e := &Envelope{Raw: raw, Payload: env.Payload, Signature: env.Signature, Data: pl.Data, ChannelHeader: ch, SignatureHeader: sh}
	if len(sh.Creator) > 0 {
		id := new(msp.SerializedIdentity)
		if err := proto.Unmarshal(sh.Creator, id); err != nil {
			return nil, fmt.Errorf("%w: creator identity: %v", ErrMalformed, err)
		}
		e.Creator = id
	}
	return e, nil
}

// Type returns the channel header type.
func (e *Envelope) Type() common.HeaderType { return common.HeaderType(e.ChannelHeader.GetType()) }

// TxID returns the channel header's transaction id.
func (e *Envelope) TxID() string { return e.ChannelHeader.GetTxId() }

// ChannelID returns the channel header's channel id.
func (e *Envelope) ChannelID() string { return e.ChannelHeader.GetChannelId() }

// Size is Fabric's message size for batch limits: len(Payload)+len(Signature).
func (e *Envelope) Size() uint32 { return uint32(len(e.Payload) + len(e.Signature)) }

// CheckTxID checks TxId == hex(SHA-256(nonce ‖ creator)), as Fabric's
// protoutil.CheckTxID.
func (e *Envelope) CheckTxID() error {
	want := ComputeTxID(e.SignatureHeader.GetNonce(), e.SignatureHeader.GetCreator())
	if e.TxID() != want {
		return fmt.Errorf("%w: got %q, want %q", ErrTxID, e.TxID(), want)
	}
	return nil
}

// VerifySignature checks the envelope signature against the creator's
// certificate (ECDSA, SHA-256 of the payload, low-S). It does not decide
// whether the creator belongs to the channel: that is the caller's policy.
func (e *Envelope) VerifySignature() error {
	if len(e.SignatureHeader.GetCreator()) == 0 {
		return ErrNoCreator
	}
	return VerifyCreatorSignature(e.SignatureHeader.Creator, e.Payload, e.Signature)
}

// ComputeTxID returns hex(SHA-256(nonce ‖ creator)).
func ComputeTxID(nonce, creator []byte) string {
	h := sha256.New()
	h.Write(nonce)
	h.Write(creator)
	return hex.EncodeToString(h.Sum(nil))
}

// MessageSize returns len(Payload)+len(Signature) of a marshalled
// common.Envelope (Fabric's size for BatchSize limits) without decoding the
// payload. It fails with ErrMalformed on bytes that are not an envelope.
func MessageSize(raw []byte) (uint32, error) {
	var lens [3]uint64 // by field number; proto3: the last occurrence wins
	for len(raw) > 0 {
		num, typ, tl := protowire.ConsumeTag(raw)
		if tl < 0 {
			return 0, fmt.Errorf("%w: envelope: %v", ErrMalformed, protowire.ParseError(tl))
		}
		raw = raw[tl:]
		if typ == protowire.BytesType && (num == 1 || num == 2) {
			v, vl := protowire.ConsumeBytes(raw)
			if vl < 0 {
				return 0, fmt.Errorf("%w: envelope: %v", ErrMalformed, protowire.ParseError(vl))
			}
			lens[num] = uint64(len(v))
			raw = raw[vl:]
			continue
		}
		vl := protowire.ConsumeFieldValue(num, typ, raw)
		if vl < 0 {
			return 0, fmt.Errorf("%w: envelope: %v", ErrMalformed, protowire.ParseError(vl))
		}
		raw = raw[vl:]
	}
	n := lens[1] + lens[2]
	if n > 1<<32-1 {
		return 0, fmt.Errorf("%w: envelope larger than 4 GiB", ErrTooLarge)
	}
	return uint32(n), nil
}

// AdmitConfig says what Admit accepts. The zero value accepts any channel,
// any header type and any size.
type AdmitConfig struct {
	// ChannelID, if set, is the only channel accepted.
	ChannelID string
	// AbsoluteMaxBytes, if non-zero, is the largest Size() accepted (the
	// channel's BatchSize.AbsoluteMaxBytes, as Fabric's MaxBytesRule).
	AbsoluteMaxBytes uint32
	// Types, if non-empty, are the header types accepted.
	Types []common.HeaderType
	// Verify checks the envelope signature; nil means VerifyCreatorSignature.
	// A CreatorCache's Verify avoids parsing the certificate every time.
	Verify func(creator, data, sig []byte) error
}

// Admit runs the checks a Broadcast handler makes before ordering an
// envelope, in order: well-formed, size within AbsoluteMaxBytes, channel,
// header type, creator present, TxId bound to nonce and creator, signature
// valid and low-S. It does NOT check that the creator is a member with the
// writer role, nor duplicate tx ids: both need state the caller owns.
func Admit(raw []byte, c AdmitConfig) (*Envelope, error) {
	e, err := ParseEnvelope(raw)
	if err != nil {
		return nil, err
	}
	if c.AbsoluteMaxBytes != 0 && e.Size() > c.AbsoluteMaxBytes {
		return nil, fmt.Errorf("%w: message payload is %d bytes and exceeds maximum allowed %d bytes", ErrTooLarge, e.Size(), c.AbsoluteMaxBytes)
	}
	if c.ChannelID != "" && e.ChannelID() != c.ChannelID {
		return nil, fmt.Errorf("%w: envelope is for channel %q, this is %q", ErrWrongChannel, e.ChannelID(), c.ChannelID)
	}
	if len(c.Types) > 0 && !slices.Contains(c.Types, e.Type()) {
		return nil, fmt.Errorf("%w: %s", ErrHeaderType, e.Type())
	}
	if e.Creator == nil {
		return nil, ErrNoCreator
	}
	if err := e.CheckTxID(); err != nil {
		return nil, err
	}
	verify := c.Verify
	if verify == nil {
		verify = VerifyCreatorSignature
	}
	if err := verify(e.SignatureHeader.Creator, e.Payload, e.Signature); err != nil {
		return nil, err
	}
	return e, nil
}

// CreatorCertificate decodes a marshalled msp.SerializedIdentity whose
// IdBytes is a PEM certificate, as Fabric X.509 MSPs write them.
func CreatorCertificate(creator []byte) (mspID string, cert *x509.Certificate, err error) {
	id := new(msp.SerializedIdentity)
	if err := proto.Unmarshal(creator, id); err != nil {
		return "", nil, fmt.Errorf("%w: creator identity: %v", ErrMalformed, err)
	}
	p, _ := pem.Decode(id.IdBytes)
	if p == nil || p.Type != "CERTIFICATE" {
		return "", nil, fmt.Errorf("%w: creator of MSP %q does not hold a PEM certificate", ErrMalformed, id.Mspid)
	}
	cert, err = x509.ParseCertificate(p.Bytes)
	if err != nil {
		return "", nil, fmt.Errorf("%w: creator certificate of MSP %q: %v", ErrMalformed, id.Mspid, err)
	}
	return id.Mspid, cert, nil
}

// VerifyCreatorSignature verifies that sig is a low-S DER ECDSA signature over
// SHA-256(data) by the key of the certificate in creator (a marshalled
// msp.SerializedIdentity). It has the signature VerifySignatures expects.
// It checks the signature only, not the certificate's chain or validity.
func VerifyCreatorSignature(creator, data, sig []byte) error {
	mspID, cert, err := CreatorCertificate(creator)
	if err != nil {
		return err
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("%w: certificate %q of MSP %q has a %T key", ErrUnsupportedKey, cert.Subject, mspID, cert.PublicKey)
	}
	if err := VerifyECDSA(pub, data, sig); err != nil {
		return fmt.Errorf("signer %q of MSP %q: %w", cert.Subject, mspID, err)
	}
	return nil
}

// VerifyECDSA verifies a DER ECDSA signature over SHA-256(data), rejecting
// high-S signatures as Fabric does.
func VerifyECDSA(pub *ecdsa.PublicKey, data, sig []byte) error {
	low, err := IsLowS(pub, sig)
	if err != nil {
		return err
	}
	if !low {
		return ErrHighS
	}
	d := sha256.Sum256(data)
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		return ErrBadSignature
	}
	return nil
}

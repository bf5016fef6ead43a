package block

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"io"
	"math/big"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
	"google.golang.org/protobuf/proto"
)

// NonceSize is the size of the nonce in a SignatureHeader, as Fabric's
// crypto.GetRandomNonce.
const NonceSize = 24

// Sign fills the SIGNATURES and LAST_CONFIG metadata slots of b the way
// Fabric 2.5's orderer blockwriter does:
//
//	value     = OrdererBlockMetadata{LastConfig{lastConfig}, ConsenterMetadata: Metadata{Value: consenterMetadata}}
//	sigHeader = SignatureHeader{Creator: creator, Nonce: 24 bytes from rand}
//	signature = ECDSA over SHA-256(value ‖ sigHeader ‖ HeaderBytes(b.Header)), DER, low-S
//
// creator is a marshalled msp.SerializedIdentity whose certificate holds
// signer's public key. consenterMetadata is the consensus-specific metadata
// (an etcdraft.BlockMetadata for raft); as in Fabric it is wrapped in a
// common.Metadata. lastConfig is the number of the newest config block; a
// config block passes its own number (Fabric: "a config block points to
// itself"). Sign must be called after the header is final (the header is
// signed). The signer may be an HSM key (crypto.Signer); high-S signatures
// it returns are normalised to low-S. Only ECDSA keys are supported, as in
// Fabric 2.5 MSPs.
func Sign(b *common.Block, signer crypto.Signer, creator []byte, lastConfig uint64, consenterMetadata []byte, rand io.Reader) error {
	if err := checkStructure(b); err != nil {
		return err
	}
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("%w: block signer has a %T key; use an ECDSA key", ErrUnsupportedKey, signer.Public())
	}
	cm, err := marshalOpts.Marshal(&common.Metadata{Value: consenterMetadata})
	if err != nil {
		return fmt.Errorf("%w: consenter metadata: %v", ErrMalformed, err)
	}
	value, err := marshalOpts.Marshal(&common.OrdererBlockMetadata{
		LastConfig:        &common.LastConfig{Index: lastConfig},
		ConsenterMetadata: cm,
	})
	if err != nil {
		return fmt.Errorf("%w: orderer block metadata: %v", ErrMalformed, err)
	}
	nonce := make([]byte, NonceSize)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return fmt.Errorf("block %d: reading signature nonce: %w", b.Header.Number, err)
	}
	shdr, err := marshalOpts.Marshal(&common.SignatureHeader{Creator: creator, Nonce: nonce})
	if err != nil {
		return fmt.Errorf("%w: signature header: %v", ErrMalformed, err)
	}
	hb := HeaderBytes(b.Header)
	msg := make([]byte, 0, len(value)+len(shdr)+len(hb))
	msg = append(append(append(msg, value...), shdr...), hb...)
	sig, err := SignECDSA(signer, pub, msg, rand)
	if err != nil {
		return fmt.Errorf("block %d: %w", b.Header.Number, err)
	}
	sigs, err := marshalOpts.Marshal(&common.Metadata{
		Value:      value,
		Signatures: []*common.MetadataSignature{{SignatureHeader: shdr, Signature: sig}},
	})
	if err != nil {
		return fmt.Errorf("%w: signatures metadata: %v", ErrMalformed, err)
	}
	lc, err := marshalOpts.Marshal(&common.LastConfig{Index: lastConfig})
	if err != nil {
		return fmt.Errorf("%w: last config: %v", ErrMalformed, err)
	}
	lcm, err := marshalOpts.Marshal(&common.Metadata{Value: lc})
	if err != nil {
		return fmt.Errorf("%w: last config metadata: %v", ErrMalformed, err)
	}
	for len(b.Metadata.Metadata) < NumMetadataSlots {
		b.Metadata.Metadata = append(b.Metadata.Metadata, []byte{})
	}
	b.Metadata.Metadata[common.BlockMetadataIndex_SIGNATURES] = sigs
	b.Metadata.Metadata[common.BlockMetadataIndex_LAST_CONFIG] = lcm
	return nil
}

// SignECDSA signs SHA-256(msg) with signer (whose public key is pub) and
// returns a DER signature with low S, as Fabric's BCCSP does.
func SignECDSA(signer crypto.Signer, pub *ecdsa.PublicKey, msg []byte, rand io.Reader) ([]byte, error) {
	digest := sha256.Sum256(msg)
	sig, err := signer.Sign(rand, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSigner, err)
	}
	return ToLowS(pub, sig)
}

// SignedData is one (identity, data, signature) triple, as Fabric's
// protoutil.SignedData: Identity is a marshalled msp.SerializedIdentity and
// Signature is over Data.
type SignedData struct {
	Identity  []byte
	Data      []byte
	Signature []byte
}

// Signatures returns the orderer signatures of b as SignedData, ready for a
// policy check (e.g. the channel's BlockValidation policy). It returns
// ErrNoSignature if the SIGNATURES slot carries none.
func Signatures(b *common.Block) ([]SignedData, error) {
	if err := checkStructure(b); err != nil {
		return nil, err
	}
	md, err := metadataSlot(b, common.BlockMetadataIndex_SIGNATURES)
	if err != nil {
		return nil, err
	}
	if len(md.Signatures) == 0 {
		return nil, fmt.Errorf("%w: block %d", ErrNoSignature, b.Header.Number)
	}
	hb := HeaderBytes(b.Header)
	out := make([]SignedData, 0, len(md.Signatures))
	for i, ms := range md.Signatures {
		if len(ms.SignatureHeader) == 0 {
			// Fabric 3 BFT blocks identify signers by IdentifierHeader
			// (consenter id), which needs the channel's consenter set.
			return nil, fmt.Errorf("%w: block %d signature %d has no signature header (BFT identifier headers are not supported)", ErrMalformed, b.Header.Number, i)
		}
		shdr := new(common.SignatureHeader)
		if err := proto.Unmarshal(ms.SignatureHeader, shdr); err != nil {
			return nil, fmt.Errorf("%w: block %d signature %d header: %v", ErrMalformed, b.Header.Number, i, err)
		}
		data := make([]byte, 0, len(md.Value)+len(ms.SignatureHeader)+len(hb))
		data = append(append(append(data, md.Value...), ms.SignatureHeader...), hb...)
		out = append(out, SignedData{Identity: shdr.Creator, Data: data, Signature: ms.Signature})
	}
	return out, nil
}

// VerifySignatures checks every orderer signature of b with verifier, which
// receives the signer's marshalled msp.SerializedIdentity, the signed bytes
// and the signature (VerifyCreatorSignature checks the signature against the
// creator's certificate; whether the creator may sign blocks is the caller's
// policy). A block without signatures fails with ErrNoSignature.
func VerifySignatures(b *common.Block, verifier func(creator, data, sig []byte) error) error {
	sds, err := Signatures(b)
	if err != nil {
		return err
	}
	for i, sd := range sds {
		if err := verifier(sd.Identity, sd.Data, sd.Signature); err != nil {
			return fmt.Errorf("block %d signature %d: %w", b.Header.Number, i, err)
		}
	}
	return nil
}

// OrdererMetadata returns the OrdererBlockMetadata in b's SIGNATURES slot.
func OrdererMetadata(b *common.Block) (*common.OrdererBlockMetadata, error) {
	if err := checkStructure(b); err != nil {
		return nil, err
	}
	md, err := metadataSlot(b, common.BlockMetadataIndex_SIGNATURES)
	if err != nil {
		return nil, err
	}
	obm := new(common.OrdererBlockMetadata)
	if err := proto.Unmarshal(md.Value, obm); err != nil {
		return nil, fmt.Errorf("%w: block %d orderer block metadata: %v", ErrMalformed, b.Header.Number, err)
	}
	return obm, nil
}

// ConsenterMetadata returns the consensus metadata bytes of b (for raft, a
// marshalled etcdraft.BlockMetadata), unwrapped from its common.Metadata.
func ConsenterMetadata(b *common.Block) ([]byte, error) {
	obm, err := OrdererMetadata(b)
	if err != nil {
		return nil, err
	}
	md := new(common.Metadata)
	if err := proto.Unmarshal(obm.ConsenterMetadata, md); err != nil {
		return nil, fmt.Errorf("%w: block %d consenter metadata: %v", ErrMalformed, b.Header.Number, err)
	}
	return md.Value, nil
}

// LastConfigIndex returns the number of the last config block as recorded in
// b, like Fabric's protoutil.GetLastConfigIndexFromBlock: from the
// OrdererBlockMetadata of the SIGNATURES slot when present, else from the
// deprecated LAST_CONFIG slot. Genesis blocks carry neither and yield 0.
func LastConfigIndex(b *common.Block) (uint64, error) {
	if err := checkStructure(b); err != nil {
		return 0, err
	}
	md, err := metadataSlot(b, common.BlockMetadataIndex_SIGNATURES)
	if err != nil {
		return 0, err
	}
	if len(md.Value) > 0 {
		obm := new(common.OrdererBlockMetadata)
		if err := proto.Unmarshal(md.Value, obm); err != nil {
			return 0, fmt.Errorf("%w: block %d orderer block metadata: %v", ErrMalformed, b.Header.Number, err)
		}
		return obm.GetLastConfig().GetIndex(), nil
	}
	md, err = metadataSlot(b, common.BlockMetadataIndex_LAST_CONFIG)
	if err != nil {
		return 0, err
	}
	lc := new(common.LastConfig)
	if err := proto.Unmarshal(md.Value, lc); err != nil {
		return 0, fmt.Errorf("%w: block %d last config: %v", ErrMalformed, b.Header.Number, err)
	}
	return lc.Index, nil
}

// metadataSlot decodes metadata slot i of b; a missing slot decodes as empty.
func metadataSlot(b *common.Block, i common.BlockMetadataIndex) (*common.Metadata, error) {
	md := new(common.Metadata)
	slots := b.Metadata.GetMetadata()
	if int(i) >= len(slots) {
		return md, nil
	}
	if err := proto.Unmarshal(slots[i], md); err != nil {
		return nil, fmt.Errorf("%w: block %d metadata slot %s: %v", ErrMalformed, b.Header.Number, i, err)
	}
	return md, nil
}

// ToLowS returns sig (DER ECDSA) with S replaced by N−S when S > N/2.
func ToLowS(pub *ecdsa.PublicKey, sig []byte) ([]byte, error) {
	r, s, err := parseECDSASig(sig)
	if err != nil {
		return nil, err
	}
	n := pub.Curve.Params().N
	if s.Cmp(halfOrder(n)) <= 0 {
		return sig, nil
	}
	s.Sub(n, s)
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	return b.Bytes()
}

// IsLowS reports whether the DER ECDSA signature sig has S <= N/2 for pub's curve.
func IsLowS(pub *ecdsa.PublicKey, sig []byte) (bool, error) {
	_, s, err := parseECDSASig(sig)
	if err != nil {
		return false, err
	}
	return s.Cmp(halfOrder(pub.Curve.Params().N)) <= 0, nil
}

func halfOrder(n *big.Int) *big.Int { return new(big.Int).Rsh(n, 1) }

func parseECDSASig(sig []byte) (r, s *big.Int, err error) {
	r, s = new(big.Int), new(big.Int)
	in := cryptobyte.String(sig)
	var inner cryptobyte.String
	if !in.ReadASN1(&inner, cbasn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(r) || !inner.ReadASN1Integer(s) || !inner.Empty() {
		return nil, nil, fmt.Errorf("%w: not a DER ECDSA signature", ErrBadSignature)
	}
	if r.Sign() <= 0 || s.Sign() <= 0 {
		return nil, nil, fmt.Errorf("%w: ECDSA signature with non-positive r or s", ErrBadSignature)
	}
	return r, s, nil
}

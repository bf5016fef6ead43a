// Package block builds, signs and verifies Hyperledger Fabric blocks and
// parses Fabric envelopes, byte-compatible with a stock Fabric 2.5 orderer.
//
// The package is pure: no I/O, no goroutines, no clock. Time (for the block
// cutter) and randomness (for signature nonces) are inputs.
//
// Formats (github.com/hyperledger/fabric-protos-go-apiv2 v0.3.7, package common):
//
//   - Header hash: SHA-256 of the ASN.1 DER encoding of
//     SEQUENCE { INTEGER Number, OCTET STRING PreviousHash, OCTET STRING DataHash }
//     (Fabric's protoutil.BlockHeaderBytes / BlockHeaderHash).
//   - Data hash: SHA-256 of the concatenation of every Data.Data entry
//     (protoutil.ComputeBlockDataHash, Fabric 2.x).
//   - Metadata: always the 5 slots of common.BlockMetadataIndex. SIGNATURES
//     holds common.Metadata{Value: OrdererBlockMetadata{LastConfig,
//     ConsenterMetadata}, Signatures: [{SignatureHeader{Creator, Nonce},
//     Signature}]}; the signature covers Value ‖ SignatureHeader ‖ header DER.
//     LAST_CONFIG (deprecated, still written by 2.5) holds
//     common.Metadata{Value: LastConfig{Index}}.
//
// Envelopes are opaque bytes to a block: Data.Data keeps each envelope exactly
// as it was received, never re-marshalled, so the data hash and the client's
// signature stay valid.
package block

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
	"google.golang.org/protobuf/proto"
)

// Sentinel errors. Every error returned by this package wraps one of them.
var (
	// ErrMalformed: bytes that do not decode as the expected Fabric message,
	// or a message with a required part missing.
	ErrMalformed = errors.New("malformed Fabric message")
	// ErrDataHash: Header.DataHash does not match the block's data.
	ErrDataHash = errors.New("block data hash mismatch")
	// ErrChain: a block does not follow its predecessor (number or previous hash).
	ErrChain = errors.New("block does not chain to its predecessor")
	// ErrNoSignature: a block carries no orderer signature.
	ErrNoSignature = errors.New("block has no orderer signature")
	// ErrBadSignature: a signature does not verify.
	ErrBadSignature = errors.New("invalid signature")
	// ErrHighS: an ECDSA signature has S > N/2; Fabric rejects these.
	ErrHighS = errors.New("ECDSA signature is not low-S")
	// ErrUnsupportedKey: a key type Fabric MSPs do not use (only ECDSA is supported).
	ErrUnsupportedKey = errors.New("unsupported key type")
	// ErrSigner: the signer (the HSM) failed to sign; trying again later
	// may work (a token that went away and came back).
	ErrSigner = errors.New("signing with the node key")
)

// NumMetadataSlots is the number of metadata entries every block carries
// (len(common.BlockMetadataIndex_name)).
const NumMetadataSlots = 5

// marshalOpts is used for every message this package produces. Verification
// never re-marshals: it always works on the bytes it was given.
var marshalOpts = proto.MarshalOptions{Deterministic: true}

// HeaderBytes returns the ASN.1 DER encoding of h that Fabric hashes and
// signs (protoutil.BlockHeaderBytes: a struct of big.Int Number and two byte
// slices through encoding/asn1). A nil header encodes as number 0 with empty
// hashes.
func HeaderBytes(h *common.BlockHeader) []byte {
	prev, data := h.GetPreviousHash(), h.GetDataHash()
	b := cryptobyte.NewBuilder(make([]byte, 0, 32+len(prev)+len(data)))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Uint64(h.GetNumber())
		b.AddASN1OctetString(prev)
		b.AddASN1OctetString(data)
	})
	der, err := b.Bytes()
	if err != nil {
		// Cannot happen: protobuf byte fields are far below DER's length limit.
		panic(fmt.Sprintf("block: DER encoding of block header: %v", err))
	}
	return der
}

// HeaderHash returns SHA-256(HeaderBytes(h)), the value the next block
// carries as PreviousHash.
func HeaderHash(h *common.BlockHeader) []byte {
	s := sha256.Sum256(HeaderBytes(h))
	return s[:]
}

// DataHash returns SHA-256 of the concatenation of d's entries.
func DataHash(d *common.BlockData) []byte {
	h := sha256.New()
	for _, e := range d.GetData() {
		h.Write(e)
	}
	return h.Sum(nil)
}

// New returns an unsigned block with the given number, previous header hash
// and envelopes, its DataHash computed and all NumMetadataSlots metadata
// slots present (empty). The block references envelopes and their bytes; it
// does not copy or re-marshal them. Sign fills the signature slots.
func New(number uint64, prevHash []byte, envelopes [][]byte) *common.Block {
	data := &common.BlockData{Data: envelopes}
	md := make([][]byte, NumMetadataSlots)
	for i := range md {
		md[i] = []byte{}
	}
	return &common.Block{
		Header: &common.BlockHeader{
			Number:       number,
			PreviousHash: prevHash,
			DataHash:     DataHash(data),
		},
		Data:     data,
		Metadata: &common.BlockMetadata{Metadata: md},
	}
}

// Unmarshal decodes a block and checks it is structurally complete
// (header, data and metadata present). It does not verify hashes; see Verify.
func Unmarshal(raw []byte) (*common.Block, error) {
	b := new(common.Block)
	if err := proto.Unmarshal(raw, b); err != nil {
		return nil, fmt.Errorf("%w: block: %v", ErrMalformed, err)
	}
	if err := checkStructure(b); err != nil {
		return nil, err
	}
	return b, nil
}

// Marshal encodes a block deterministically.
func Marshal(b *common.Block) ([]byte, error) {
	if err := checkStructure(b); err != nil {
		return nil, err
	}
	raw, err := marshalOpts.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("%w: marshal block: %v", ErrMalformed, err)
	}
	return raw, nil
}

func checkStructure(b *common.Block) error {
	switch {
	case b == nil:
		return fmt.Errorf("%w: nil block", ErrMalformed)
	case b.Header == nil:
		return fmt.Errorf("%w: block has no header", ErrMalformed)
	case b.Data == nil:
		return fmt.Errorf("%w: block %d has no data", ErrMalformed, b.Header.Number)
	case b.Metadata == nil:
		return fmt.Errorf("%w: block %d has no metadata", ErrMalformed, b.Header.Number)
	}
	return nil
}

// Verify checks b on its own and against its predecessor:
//   - b has a header, data and metadata;
//   - Header.DataHash equals DataHash(b.Data);
//   - if prev is non-nil: b.Number == prev.Number+1 and b.PreviousHash ==
//     HeaderHash(prev.Header);
//   - if prev is nil and b.Number == 0 (a genesis block): PreviousHash is empty.
//
// With prev nil and b.Number > 0 the chain is not checked (the caller has no
// predecessor, e.g. a node that joined from a later config block).
// Signatures are checked by VerifySignatures.
func Verify(b, prev *common.Block) error {
	if err := checkStructure(b); err != nil {
		return err
	}
	n := b.Header.Number
	if got := DataHash(b.Data); !bytes.Equal(got, b.Header.DataHash) {
		return fmt.Errorf("%w: block %d: header says %x, data hashes to %x", ErrDataHash, n, b.Header.DataHash, got)
	}
	if prev == nil {
		if n == 0 && len(b.Header.PreviousHash) != 0 {
			return fmt.Errorf("%w: genesis block has a previous hash %x", ErrChain, b.Header.PreviousHash)
		}
		return nil
	}
	if prev.Header == nil {
		return fmt.Errorf("%w: previous block has no header", ErrMalformed)
	}
	if n != prev.Header.Number+1 {
		return fmt.Errorf("%w: block %d follows block %d", ErrChain, n, prev.Header.Number)
	}
	if want := HeaderHash(prev.Header); !bytes.Equal(want, b.Header.PreviousHash) {
		return fmt.Errorf("%w: block %d has previous hash %x, block %d hashes to %x", ErrChain, n, b.Header.PreviousHash, prev.Header.Number, want)
	}
	return nil
}

// VerifyHeaderChain is Verify's chain check on headers alone (for a store that
// keeps only the last header in memory). It does not check the data hash.
func VerifyHeaderChain(h, prev *common.BlockHeader) error {
	if h == nil || prev == nil {
		return fmt.Errorf("%w: missing block header", ErrMalformed)
	}
	if h.Number != prev.Number+1 {
		return fmt.Errorf("%w: block %d follows block %d", ErrChain, h.Number, prev.Number)
	}
	if want := HeaderHash(prev); !bytes.Equal(want, h.PreviousHash) {
		return fmt.Errorf("%w: block %d has previous hash %x, block %d hashes to %x", ErrChain, h.Number, h.PreviousHash, prev.Number, want)
	}
	return nil
}

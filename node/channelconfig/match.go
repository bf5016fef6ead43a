package channelconfig

import (
	"bytes"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"
)

// CarriesSignature reports whether config block b's ConfigUpdateEnvelope
// holds one of raws (marshalled ConfigSignatures, as a policy bundle's
// #cfgsig lines carry them): the block was ordered for the policy version
// whose bundle carries it (every signature covers that version's
// ConfigUpdate, and a CONFIG block carries the valid ones).
func CarriesSignature(b *common.Block, raws [][]byte) bool {
	_, cue, err := ConfigTransactionOf(b)
	if err != nil {
		return false
	}
	for _, raw := range raws {
		want := new(common.ConfigSignature)
		if proto.Unmarshal(raw, want) != nil {
			continue
		}
		for _, got := range cue.GetSignatures() {
			if bytes.Equal(got.GetSignature(), want.GetSignature()) && bytes.Equal(got.GetSignatureHeader(), want.GetSignatureHeader()) {
				return true
			}
		}
	}
	return false
}

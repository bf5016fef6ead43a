package orderer

// The node's own signing identity against its channel config: a stock
// Fabric peer evaluates /Channel/Orderer/BlockValidation over the
// SIGNATURES metadata of every block, and a block it refuses is refused
// forever (it retries, never commits, and the chain cannot be re-signed).
// So a node refuses to start, or to switch on SetIdentity, with an identity
// its channel config rejects.
//
// One case is only logged: a node whose org is not an orderer org of the
// channel config. The policy can add a consenter member after the genesis
// block, and its org stays out of the channel config until a CONFIG block
// adds it: no certificate fixes that, so the node runs, and stores the
// copies other consenters signed meanwhile (unsignable.go).

import (
	"crypto"
	"errors"
	"fmt"
	"time"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
)

// ErrSigner: the signing identity would write blocks that the channel's
// own BlockValidation policy (and so every stock peer) rejects.
var ErrSigner = errors.New("signing identity rejected")

// ErrSignerOrgMissing: the signing identity's org is not an orderer org of the channel
// config (see the top of this file): New and SetIdentity log it and go on.
var ErrSignerOrgMissing = errors.New("signing identity's org not in the channel config")

// CheckSigner reports whether blocks that signer signs as identity (a
// marshalled msp.SerializedIdentity) are acceptable under the channel
// config ch at now: signer holds the certificate's key, and the
// certificate is a valid identity of an orderer org that satisfies
// BlockValidation (with NodeOUs, an OU that resolves to a role). The error
// names the certificate, the channel and the fix.
func CheckSigner(ch *channelconfig.Channel, signer crypto.Signer, identity []byte, now time.Time) error {
	mspID, cert, err := block.CreatorCertificate(identity)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSigner, err)
	}
	if !publicKeysEqual(cert.PublicKey, signer.Public()) {
		return fmt.Errorf("%w: the signing key is not the key of certificate %q: pair the HSM key with its own certificate in the identity folder", ErrSigner, cert.Subject)
	}
	if err := ch.CheckBlockSigner(mspID, cert, now); err != nil {
		if errors.Is(err, channelconfig.ErrUnknownMSP) || errors.Is(err, channelconfig.ErrNotOrdererOrg) {
			return fmt.Errorf("%w: %w: org %s of node certificate %q is not an orderer org in the channel config of %q (a consenter the policy added after the genesis block, until a CONFIG block adds its org: ledger.config_blocks and members[].ledger_consenter): stock Fabric peers refuse the blocks this node signs",
				ErrSignerOrgMissing, err, mspID, cert.Subject, ch.Config.ChannelID)
		}
		hint := fmt.Sprintf("issue the node a certificate from the %s CA with OU=%s: memberd hsm csr --key URI --cn NAME --ou %s --ip ADDR...; memberd ca sign ...; and put it in the identity folder",
			mspID, channelconfig.OrdererOU, channelconfig.OrdererOU)
		return fmt.Errorf("%w: node certificate %q (serial %s) cannot sign blocks of channel %q, which stock Fabric peers would refuse for good: %w; %s",
			ErrSigner, cert.Subject, cert.SerialNumber, ch.Config.ChannelID, err, hint)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

package orderer

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// ErrVerify: a fetched block failed verification.
var ErrVerify = errors.New("block verification failed")

// VerifyFetched checks a block fetched with Deliver before it is kept: its
// number is want, its header chains to prev (nil: not checked) and its data
// hash matches; every orderer signature is a valid low-S ECDSA signature by
// the certificate it carries and, with pol, that certificate belongs to a
// consenter member of pol. The genesis block (number 0, no prev) is
// unsigned, as Fabric's.
func VerifyFetched(b, prev *common.Block, want uint64, pol *policy.Policy) error {
	if b.GetHeader().GetNumber() != want {
		return fmt.Errorf("%w: got block %d, want %d", ErrVerify, b.GetHeader().GetNumber(), want)
	}
	if err := block.Verify(b, prev); err != nil {
		return fmt.Errorf("%w: block %d: %w", ErrVerify, want, err)
	}
	if want == 0 && prev == nil {
		return nil // the genesis block is unsigned, as Fabric's
	}
	err := block.VerifySignatures(b, func(creator, data, sig []byte) error {
		if err := block.VerifyCreatorSignature(creator, data, sig); err != nil {
			return err
		}
		if pol == nil {
			return nil
		}
		_, cert, err := block.CreatorCertificate(creator)
		if err != nil {
			return err
		}
		m, err := pol.MemberForCertificateAt([][]*x509.Certificate{{cert}}, cert.NotBefore)
		if err != nil {
			return err
		}
		if !m.HasRole(policy.RoleConsenter) {
			return fmt.Errorf("signer %q belongs to member %q, which is not a consenter", cert.Subject.CommonName, m.ID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: block %d: %w", ErrVerify, want, err)
	}
	return nil
}

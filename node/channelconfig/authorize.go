package channelconfig

// Whether admin signatures authorise a config update, as a stock Fabric
// 2.5 peer decides it (common/configtx: authorizeUpdate, verifyDeltaSet,
// policyForItem): every element the update modifies (its write-set version
// is the version in force + 1) needs the mod_policy it has in the config
// in force to be met by the ConfigUpdateEnvelope's signatures; the
// mod_policy of a group is one of its own policies, that of a value or a
// policy one of its parent group's. Added elements need no policy of their
// own: adding one changes its group's key set, so the group's version.

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/policy"
)

// ErrUnderSigned: the admin signatures on a config update do not meet the
// mod_policy of an element it modifies; a stock peer refuses the CONFIG
// block (and stops at it).
var ErrUnderSigned = errors.New("config update not signed by the admins its changes need")

// CheckUpdateSigned reports whether sigs (signatures on u's ConfigUpdate
// that ConfigSignatures found valid) authorise u against c, the config in
// force, with an error naming the first element whose mod_policy they do
// not meet.
func (c *Channel) CheckUpdateSigned(u *Update, sigs []*common.ConfigSignature) error {
	return c.authorize(c.Group, u.ConfigUpdate.GetWriteSet(), "/Channel", c.signersOf(sigs))
}

// signersOf returns the identities that made sigs (those it can read).
func (c *Channel) signersOf(sigs []*common.ConfigSignature) []signer {
	var signers []signer
	for _, cs := range sigs {
		sh := new(common.SignatureHeader)
		si := new(msp.SerializedIdentity)
		if proto.Unmarshal(cs.GetSignatureHeader(), sh) != nil || proto.Unmarshal(sh.GetCreator(), si) != nil {
			continue
		}
		cert, err := parsePEMCert(si.GetIdBytes())
		if err != nil {
			continue
		}
		signers = append(signers, signer{mspID: si.GetMspid(), cert: cert})
	}
	return signers
}

func (c *Channel) authorize(cur, write *common.ConfigGroup, path string, signers []signer) error {
	if cur == nil || write == nil {
		return nil
	}
	need := func(g *common.ConfigGroup, modPolicy, elem string) error {
		if modPolicy == "" || strings.Contains(modPolicy, "/") {
			return fmt.Errorf("%w: %s has mod_policy %q; only a policy of its own group is evaluated here", ErrUnsupported, elem, modPolicy)
		}
		ok, err := c.evaluate(g, modPolicy, signers, 0)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: changing %s needs %s/%s, which the admin signatures %s do not meet: have more member admins sign the ConfigUpdate ('memberd policy sign --config-block ... --admin-cert ...')",
				ErrUnderSigned, elem, path, modPolicy, signerNames(signers))
		}
		return nil
	}
	if write.GetVersion() == cur.GetVersion()+1 {
		if err := need(cur, cur.GetModPolicy(), path); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(write.GetValues()) {
		if ex, ok := cur.GetValues()[k]; ok && write.Values[k].GetVersion() == ex.GetVersion()+1 {
			if err := need(cur, ex.GetModPolicy(), path+"/"+k); err != nil {
				return err
			}
		}
	}
	for _, k := range sortedKeys(write.GetPolicies()) {
		if ex, ok := cur.GetPolicies()[k]; ok && write.Policies[k].GetVersion() == ex.GetVersion()+1 {
			if err := need(cur, ex.GetModPolicy(), path+"/policies/"+k); err != nil {
				return err
			}
		}
	}
	for _, k := range sortedKeys(write.GetGroups()) {
		if err := c.authorize(cur.GetGroups()[k], write.Groups[k], path+"/"+k, signers); err != nil {
			return err
		}
	}
	return nil
}

func signerNames(signers []signer) string {
	if len(signers) == 0 {
		return "(none)"
	}
	var names []string
	for _, s := range signers {
		names = append(names, fmt.Sprintf("%s %q", s.mspID, s.cert.Subject.CommonName))
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// VersionCheck is what policy version p does to the channel whose config
// in force is a config block's (CheckPolicyVersion).
type VersionCheck struct {
	// Update is the channel update p derives; nil when p changes nothing
	// in the channel config.
	Update *Update
	// Signers names the identities of the valid admin signatures (MSP id
	// and certificate CN); Invalid says why each other #cfgsig is not one.
	Signers []string
	Invalid []error
	// Err wraps ErrUnderSigned when the valid signatures do not authorise
	// Update as a stock peer checks it.
	Err error
}

// CheckPolicyVersion derives the update that p makes to the config of
// configBlock (the channel's last config block) and checks the admin
// signatures p's bundle carries for it (#cfgsig lines). The error is for
// inputs that cannot be checked at all (not a config block, p not
// deriving a config).
func CheckPolicyVersion(configBlock *common.Block, p *policy.Policy) (*VersionCheck, error) {
	channelID, cfg, err := BlockConfig(configBlock)
	if err != nil {
		return nil, err
	}
	in, err := ParseConfig(channelID, cfg)
	if err != nil {
		return nil, err
	}
	u, err := NextFromPolicy(cfg, channelID, p, nil)
	if errors.Is(err, ErrNoChange) {
		return &VersionCheck{}, nil
	}
	if err != nil {
		return nil, err
	}
	cub, err := u.ConfigUpdateBytes()
	if err != nil {
		return nil, err
	}
	var raws [][]byte
	for _, s := range p.ConfigSignatures() {
		raws = append(raws, s.Raw)
	}
	valid, invalid := ConfigSignatures(cub, raws)
	vc := &VersionCheck{Update: u, Invalid: invalid, Err: in.CheckUpdateSigned(u, valid)}
	for _, s := range in.signersOf(valid) {
		vc.Signers = append(vc.Signers, fmt.Sprintf("%s %q", s.mspID, s.cert.Subject.CommonName))
	}
	return vc, nil
}

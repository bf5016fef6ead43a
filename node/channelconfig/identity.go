package channelconfig

// Identity checks against a channel's own configuration, as a stock Fabric
// 2.5 peer makes them on every block: is a certificate a valid identity of
// an org's MSP (chains to its CAs, not a CA itself, and with NodeOUs on,
// carries exactly one OU that resolves to a role), and does a block signed
// by it satisfy /Channel/Orderer/BlockValidation. A node runs them on its
// own signing identity, so that it never signs blocks that peers would
// refuse for good.
//
// What is evaluated: X.509 MSPs (roots, intermediates, CRLs, NodeOU
// identifiers with or without their certificate), ImplicitMeta policies
// (ANY, ALL, MAJORITY over sub-groups) and signature policies over ROLE
// (member, admin, client, peer, orderer) and IDENTITY principals, for ONE
// signer. Not evaluated: the MSP-wide OU restrictions
// (organizational_unit_identifiers), which memberd's channel configs do not
// write.

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"
)

var (
	// ErrIdentity: the channel configuration rejects an identity.
	ErrIdentity = errors.New("identity rejected by the channel configuration")
	// ErrUnknownMSP: the identity's MSP is not an organisation of the
	// channel (it comes with ErrIdentity).
	ErrUnknownMSP = errors.New("MSP not in the channel configuration")
	// ErrNotOrdererOrg: the identity's MSP is an organisation of the channel
	// but not of its Orderer group (it comes with ErrIdentity).
	ErrNotOrdererOrg = errors.New("MSP not an orderer organisation of the channel")
)

// mspView is an org's X.509 MSP as the channel config defines it.
type mspView struct {
	name   string
	roots  *x509.CertPool
	inters *x509.CertPool
	ous    *msp.FabricNodeOUs // nil or disabled: no roles
	crls   []*x509.RevocationList
}

// findMSP returns the MSP named mspID in the Orderer or Application group.
func (c *Channel) findMSP(mspID string) (*mspView, error) {
	for _, section := range []string{"Orderer", "Application"} {
		g := c.Group.GetGroups()[section]
		for _, name := range sortedKeys(g.GetGroups()) {
			v, ok := g.Groups[name].GetValues()["MSP"]
			if !ok {
				continue
			}
			mc := new(msp.MSPConfig)
			fc := new(msp.FabricMSPConfig)
			if proto.Unmarshal(v.Value, mc) != nil || mc.Type != 0 || proto.Unmarshal(mc.Config, fc) != nil || fc.Name != mspID {
				continue
			}
			m := &mspView{name: fc.Name, roots: x509.NewCertPool(), inters: x509.NewCertPool(), ous: fc.FabricNodeOus}
			for _, p := range fc.RootCerts {
				if cert, err := parsePEMCert(p); err == nil {
					m.roots.AddCert(cert)
				}
			}
			for _, p := range fc.IntermediateCerts {
				if cert, err := parsePEMCert(p); err == nil {
					m.inters.AddCert(cert)
				}
			}
			for i, p := range fc.RevocationList {
				crl, err := parsePEMCRL(p)
				if err != nil {
					// A Fabric MSP with such a CRL fails to set up.
					return nil, fmt.Errorf("%w: MSP %s in channel %q: revocation list entry %d: %v", ErrIdentity, mspID, c.Config.ChannelID, i, err)
				}
				m.crls = append(m.crls, crl)
			}
			return m, nil
		}
	}
	return nil, fmt.Errorf("%w: %w: channel %q has no organisation with MSP id %q", ErrIdentity, ErrUnknownMSP, c.Config.ChannelID, mspID)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Role validates cert as an identity of the MSP mspID (Fabric's rules) and
// returns its NodeOU role: ClientOU, PeerOU, AdminOU or OrdererOU, or ""
// when the MSP does not enable NodeOUs.
func (c *Channel) Role(mspID string, cert *x509.Certificate) (string, error) {
	m, err := c.findMSP(mspID)
	if err != nil {
		return "", err
	}
	return m.role(cert)
}

func (m *mspView) role(cert *x509.Certificate) (string, error) {
	if cert.IsCA {
		return "", fmt.Errorf("%w: certificate %q is a CA certificate, which cannot be an identity of MSP %s", ErrIdentity, cert.Subject, m.name)
	}
	// Fabric checks the chain at NotBefore+1s (expiry is not its concern here).
	chains, err := cert.Verify(x509.VerifyOptions{Roots: m.roots, Intermediates: m.inters,
		CurrentTime: cert.NotBefore.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return "", fmt.Errorf("%w: certificate %q (issuer %q) does not chain to a CA of MSP %s in the channel config: %v; issue it from that member's CA",
			ErrIdentity, cert.Subject, cert.Issuer, m.name, err)
	}
	if len(chains) != 1 {
		return "", fmt.Errorf("%w: certificate %q has %d validation chains in MSP %s; Fabric needs exactly one", ErrIdentity, cert.Subject, len(chains), m.name)
	}
	if err := m.checkCRLs(cert, chains[0]); err != nil {
		return "", err
	}
	if m.ous == nil || !m.ous.Enable {
		return "", nil
	}
	var roles []string
	for _, id := range []struct {
		role string
		ou   *msp.FabricOUIdentifier
	}{{ClientOU, m.ous.ClientOuIdentifier}, {PeerOU, m.ous.PeerOuIdentifier}, {AdminOU, m.ous.AdminOuIdentifier}, {OrdererOU, m.ous.OrdererOuIdentifier}} {
		if id.ou == nil || !hasOU(cert, id.ou.OrganizationalUnitIdentifier) {
			continue
		}
		if len(id.ou.Certificate) > 0 && !certifiedBy(chains[0], id.ou.Certificate) {
			continue
		}
		roles = append(roles, id.role)
	}
	switch len(roles) {
	case 0:
		return "", fmt.Errorf("%w: certificate %q has no OU that resolves to client, peer, admin or orderer in MSP %s (OUs %q; the channel config enables NodeOUs with OU names %s)",
			ErrIdentity, cert.Subject, m.name, cert.Subject.OrganizationalUnit, m.ouNames())
	case 1:
		return roles[0], nil
	default:
		return "", fmt.Errorf("%w: certificate %q resolves to several roles %q in MSP %s; Fabric needs exactly one", ErrIdentity, cert.Subject, roles, m.name)
	}
}

// checkCRLs refuses cert when a CRL of the MSP revokes it, as a Fabric MSP
// decides: a CRL whose authority key identifier is the subject key
// identifier of the certificate's issuer in chain, signed by that issuer,
// lists its serial. Like Fabric, a CRL without an authority key identifier
// or an issuer without a subject key identifier fails every identity.
func (m *mspView) checkCRLs(cert *x509.Certificate, chain []*x509.Certificate) error {
	if len(m.crls) == 0 || len(chain) < 2 {
		return nil
	}
	issuer := chain[1]
	if len(issuer.SubjectKeyId) == 0 {
		return fmt.Errorf("%w: issuer %q of certificate %q has no subject key identifier, which MSP %s needs to apply its CRLs", ErrIdentity, issuer.Subject, cert.Subject, m.name)
	}
	for _, crl := range m.crls {
		if len(crl.AuthorityKeyId) == 0 {
			return fmt.Errorf("%w: a CRL of MSP %s (issuer %q) has no authority key identifier, so Fabric refuses every identity of the MSP", ErrIdentity, m.name, crl.Issuer)
		}
		if !bytes.Equal(crl.AuthorityKeyId, issuer.SubjectKeyId) {
			continue
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber == nil || e.SerialNumber.Cmp(cert.SerialNumber) != 0 {
				continue
			}
			if issuer.CheckSignature(crl.SignatureAlgorithm, crl.RawTBSRevocationList, crl.Signature) != nil {
				break // not the issuer's CRL: Fabric skips it
			}
			return fmt.Errorf("%w: certificate %q (serial %s) is revoked by the CRL of %q in MSP %s", ErrIdentity, cert.Subject, cert.SerialNumber, issuer.Subject, m.name)
		}
	}
	return nil
}

func (m *mspView) ouNames() string {
	var names []string
	for _, id := range []*msp.FabricOUIdentifier{m.ous.ClientOuIdentifier, m.ous.PeerOuIdentifier, m.ous.AdminOuIdentifier, m.ous.OrdererOuIdentifier} {
		if id != nil {
			names = append(names, id.OrganizationalUnitIdentifier)
		}
	}
	return strings.Join(names, ", ")
}

func hasOU(cert *x509.Certificate, ou string) bool {
	for _, o := range cert.Subject.OrganizationalUnit {
		if o == ou {
			return true
		}
	}
	return false
}

// certifiedBy reports whether the CA certificate p (PEM, a root or an
// intermediate of the MSP) is the issuer path of the chain: Fabric compares
// the certification path of the identity (its chain without the leaf)
// with that of the identifier's certificate.
func certifiedBy(chain []*x509.Certificate, p []byte) bool {
	b, _ := pem.Decode(p)
	if b == nil || len(chain) < 2 {
		return false
	}
	return bytes.Equal(chain[1].Raw, b.Bytes)
}

// CheckBlockSigner reports whether blocks signed by cert as a member of the
// MSP mspID satisfy the channel's /Channel/Orderer/BlockValidation policy
// (and so whether a stock peer accepts them), with an error that says why
// not. A certificate past its NotAfter at now is refused as well.
func (c *Channel) CheckBlockSigner(mspID string, cert *x509.Certificate, now time.Time) error {
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%w: certificate %q expired at %s", ErrIdentity, cert.Subject, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	m, err := c.findMSP(mspID)
	if err != nil {
		return err
	}
	if _, err := m.role(cert); err != nil {
		return err
	}
	ord := c.Group.GetGroups()["Orderer"]
	isOrderer := false
	for _, o := range c.Config.OrdererOrgs {
		isOrderer = isOrderer || o.MSPID == mspID
	}
	if !isOrderer {
		return fmt.Errorf("%w: %w: MSP %s is not in the Orderer group of channel %q, so /Channel/Orderer/BlockValidation cannot accept blocks signed by certificate %q",
			ErrIdentity, ErrNotOrdererOrg, mspID, c.Config.ChannelID, cert.Subject)
	}
	ok, err := c.evaluate(ord, "BlockValidation", []signer{{mspID, cert}}, 0)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: a block signed by certificate %q of MSP %s does not satisfy /Channel/Orderer/BlockValidation of channel %q: it needs an identity of an orderer organisation that its Writers policy accepts",
			ErrIdentity, cert.Subject, mspID, c.Config.ChannelID)
	}
	return nil
}

// maxPolicyDepth bounds the nesting of policies evaluated.
const maxPolicyDepth = 8

// signer is the identity behind one valid signature.
type signer struct {
	mspID string
	cert  *x509.Certificate
}

// evaluate reports whether the signatures of signers (each valid, each
// counted once) satisfy policy name of group g.
func (c *Channel) evaluate(g *common.ConfigGroup, name string, signers []signer, depth int) (bool, error) {
	if depth > maxPolicyDepth {
		return false, fmt.Errorf("%w: policies nested deeper than %d", ErrConfig, maxPolicyDepth)
	}
	cp := g.GetPolicies()[name]
	if cp.GetPolicy() == nil {
		return false, nil // a missing policy is never satisfied
	}
	switch common.Policy_PolicyType(cp.Policy.Type) {
	case common.Policy_IMPLICIT_META:
		im := new(common.ImplicitMetaPolicy)
		if err := proto.Unmarshal(cp.Policy.Value, im); err != nil {
			return false, fmt.Errorf("%w: policy %s: %v", ErrConfig, name, err)
		}
		subs := sortedKeys(g.GetGroups())
		n := 0
		for _, s := range subs {
			ok, err := c.evaluate(g.Groups[s], im.SubPolicy, signers, depth+1)
			if err != nil {
				return false, err
			}
			if ok {
				n++
			}
		}
		switch im.Rule {
		case common.ImplicitMetaPolicy_ANY:
			return n >= 1, nil
		case common.ImplicitMetaPolicy_ALL:
			return n == len(subs), nil
		default: // MAJORITY
			return n >= len(subs)/2+1, nil
		}
	case common.Policy_SIGNATURE:
		spe := new(common.SignaturePolicyEnvelope)
		if err := proto.Unmarshal(cp.Policy.Value, spe); err != nil {
			return false, fmt.Errorf("%w: policy %s: %v", ErrConfig, name, err)
		}
		return c.signedBy(spe.Rule, spe.Identities, signers, depth)
	default:
		return false, fmt.Errorf("%w: policy %s has type %d, which this node cannot evaluate", ErrUnsupported, name, cp.Policy.Type)
	}
}

// signedBy evaluates a signature policy rule for signers. An N-out-of
// rule needs N of its sub-rules met by distinct signers (Fabric uses each
// signature once); sub-rules are matched greedily, exact for the rules
// memberd writes (N = 1) and for any rule whose sub-rules name distinct
// organisations.
func (c *Channel) signedBy(r *common.SignaturePolicy, ids []*msp.MSPPrincipal, signers []signer, depth int) (bool, error) {
	if depth > maxPolicyDepth {
		return false, fmt.Errorf("%w: signature policy nested deeper than %d", ErrConfig, maxPolicyDepth)
	}
	switch t := r.GetType().(type) {
	case *common.SignaturePolicy_SignedBy:
		if t.SignedBy < 0 || int(t.SignedBy) >= len(ids) {
			return false, fmt.Errorf("%w: signature policy names identity %d of %d", ErrConfig, t.SignedBy, len(ids))
		}
		for _, s := range signers {
			ok, err := c.principal(ids[t.SignedBy], s.mspID, s.cert)
			if err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	case *common.SignaturePolicy_NOutOf_:
		need := int(t.NOutOf.GetN())
		if need <= 0 {
			return true, nil
		}
		free := slices.Clone(signers)
		for _, sub := range t.NOutOf.GetRules() {
			for i, s := range free {
				ok, err := c.signedBy(sub, ids, []signer{s}, depth+1)
				if err != nil {
					return false, err
				}
				if ok {
					free = slices.Delete(free, i, i+1)
					if need--; need == 0 {
						return true, nil
					}
					break
				}
			}
		}
		return false, nil
	default:
		return false, fmt.Errorf("%w: empty signature policy rule", ErrConfig)
	}
}

func (c *Channel) principal(p *msp.MSPPrincipal, mspID string, cert *x509.Certificate) (bool, error) {
	switch p.PrincipalClassification {
	case msp.MSPPrincipal_ROLE:
		r := new(msp.MSPRole)
		if err := proto.Unmarshal(p.Principal, r); err != nil {
			return false, fmt.Errorf("%w: MSP role principal: %v", ErrConfig, err)
		}
		if r.MspIdentifier != mspID {
			return false, nil
		}
		m, err := c.findMSP(mspID)
		if err != nil {
			return false, nil
		}
		role, err := m.role(cert)
		if err != nil {
			return false, nil
		}
		switch r.Role {
		case msp.MSPRole_MEMBER:
			return true, nil
		case msp.MSPRole_ADMIN:
			return role == AdminOU, nil
		case msp.MSPRole_CLIENT:
			return role == ClientOU, nil
		case msp.MSPRole_PEER:
			return role == PeerOU, nil
		case msp.MSPRole_ORDERER:
			return role == OrdererOU, nil
		}
		return false, nil
	case msp.MSPPrincipal_IDENTITY:
		si := new(msp.SerializedIdentity)
		if err := proto.Unmarshal(p.Principal, si); err != nil {
			return false, fmt.Errorf("%w: identity principal: %v", ErrConfig, err)
		}
		b, _ := pem.Decode(si.IdBytes)
		return si.Mspid == mspID && b != nil && bytes.Equal(b.Bytes, cert.Raw), nil
	default:
		return false, nil
	}
}

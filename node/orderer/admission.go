package orderer

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// memberCacheTTL: how long a creator's membership verdict is reused for one
// policy version before the certificate is checked again (validity, revocation).
const memberCacheTTL = time.Minute

const memberCacheMax = 4096

// admitter runs the admission checks. Safe for concurrent use.
type admitter struct {
	channel  string
	maxBytes atomic.Uint32 // the config in force's AbsoluteMaxBytes
	sigs     *block.CreatorCache
	policy   func() *policy.Policy
	now      func() time.Time

	mu      sync.Mutex
	members map[string]memberVerdict // by creator bytes
}

type memberVerdict struct {
	pol     *policy.Policy
	member  *policy.Member
	err     error
	checked time.Time
}

func newAdmitter(channel string, maxBytes uint32, pol func() *policy.Policy, now func() time.Time) *admitter {
	a := &admitter{channel: channel, sigs: block.NewCreatorCache(0),
		policy: pol, now: now, members: make(map[string]memberVerdict)}
	a.maxBytes.Store(maxBytes)
	return a
}

// admitBroadcast checks an envelope for ordering: everything but duplicates.
func (a *admitter) admitBroadcast(raw []byte) (*block.Envelope, error) {
	if mb := a.maxBytes.Load(); mb != 0 && uint64(len(raw)) > uint64(mb)+1024 {
		// Cheap early bound before decoding (Size() is checked exactly below).
		return nil, fmt.Errorf("%w: %d bytes, channel %q allows %d", block.ErrTooLarge, len(raw), a.channel, mb)
	}
	env, err := block.ParseEnvelope(raw)
	if err != nil {
		return nil, err
	}
	return env, a.checkBroadcast(env)
}

// checkBroadcast is admitBroadcast on a parsed envelope.
func (a *admitter) checkBroadcast(env *block.Envelope) error {
	if mb := a.maxBytes.Load(); mb != 0 && env.Size() > mb {
		return fmt.Errorf("%w: %d bytes, channel %q allows %d (BatchSize.AbsoluteMaxBytes)", block.ErrTooLarge, env.Size(), a.channel, mb)
	}
	if env.ChannelID() != a.channel {
		return fmt.Errorf("%w: %q (this node orders %q)", block.ErrWrongChannel, env.ChannelID(), a.channel)
	}
	switch env.Type() {
	case common.HeaderType_ENDORSER_TRANSACTION:
	case common.HeaderType_CONFIG_UPDATE:
		return fmt.Errorf("%w: channel %q follows the consortium policy, and nothing else may change it. "+
			"To change the channel (member orgs and CAs, consenters, orderer endpoints, batch size), edit the policy document, "+
			"have the member admins sign it with `memberd policy sign` (with --config-block and --admin-cert, so that stock peers accept the CONFIG block), "+
			"check it with `memberd policy verify` and distribute it with `memberd policy push`: "+
			"the ordering service then writes the CONFIG block itself", ErrConfigUpdate, a.channel)
	default:
		return fmt.Errorf("%w: %s (only ENDORSER_TRANSACTION is ordered)", block.ErrHeaderType, env.Type())
	}
	return a.authenticate(env, policy.RoleWriter)
}

// authenticate checks tx id binding, signature and membership with one of roles.
func (a *admitter) authenticate(env *block.Envelope, roles ...policy.Role) error {
	if env.Creator == nil {
		return fmt.Errorf("%w: signature header has no creator", block.ErrNoCreator)
	}
	if env.Type() != common.HeaderType_DELIVER_SEEK_INFO {
		if err := env.CheckTxID(); err != nil {
			return err
		}
	}
	if err := a.sigs.Verify(env.SignatureHeader.Creator, env.Payload, env.Signature); err != nil {
		return err
	}
	m, err := a.member(env.SignatureHeader.Creator)
	if err != nil {
		return err
	}
	for _, r := range roles {
		if m.HasRole(r) {
			return nil
		}
	}
	return fmt.Errorf("%w: member %q (MSP %s) lacks role %v in policy version %d", ErrForbidden, m.ID, m.MSPID, roles, a.policy().Version())
}

// member returns the policy member whose CA issued the creator's certificate
// and whose MSP id the creator names.
func (a *admitter) member(creator []byte) (*policy.Member, error) {
	pol := a.policy()
	if pol == nil {
		return nil, fmt.Errorf("%w: no policy loaded", ErrUnavailable)
	}
	now := a.now()
	a.mu.Lock()
	v, ok := a.members[string(creator)]
	a.mu.Unlock()
	if ok && v.pol == pol && now.Sub(v.checked) < memberCacheTTL && !now.Before(v.checked) {
		return v.member, v.err
	}
	m, err := lookupMember(pol, creator, now)
	a.mu.Lock()
	if len(a.members) >= memberCacheMax {
		for k := range a.members { // evict an arbitrary entry
			delete(a.members, k)
			break
		}
	}
	a.members[string(creator)] = memberVerdict{pol: pol, member: m, err: err, checked: now}
	a.mu.Unlock()
	return m, err
}

func lookupMember(pol *policy.Policy, creator []byte, now time.Time) (*policy.Member, error) {
	mspID, cert, err := block.CreatorCertificate(creator)
	if err != nil {
		return nil, err
	}
	m, err := pol.MemberForCertificateAt([][]*x509.Certificate{{cert}}, now)
	if errors.Is(err, policy.ErrRevoked) {
		// Issued by a member CA, but revoked (members[].crls or
		// revocations): the member CA is not the problem.
		return nil, fmt.Errorf("%w: certificate %q (MSP %s) is revoked: %w",
			ErrForbidden, cert.Subject.CommonName, mspID, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: certificate %q (MSP %s) is not issued by a member CA of policy version %d: %w",
			ErrForbidden, cert.Subject.CommonName, mspID, pol.Version(), err)
	}
	if m.MSPID != mspID {
		return nil, fmt.Errorf("%w: certificate %q is issued by member %q whose MSP id is %q, but the creator claims MSP %q",
			ErrForbidden, cert.Subject.CommonName, m.ID, m.MSPID, mspID)
	}
	return m, nil
}

// txKey is a tx id decoded (Fabric tx ids are hex SHA-256); other strings
// are hashed into the same space by taking their bytes.
type txKey [32]byte

func keyOf(txid string) txKey {
	var k txKey
	if len(txid) == 64 {
		if _, err := hex.Decode(k[:], []byte(txid)); err == nil {
			return k
		}
	}
	copy(k[:], txid)
	return k
}

// recentSet is a bounded FIFO set of tx ids. Not safe for concurrent use.
type recentSet struct {
	max  int
	ring []txKey
	next int
	set  map[txKey]struct{}
}

func newRecentSet(max int) *recentSet {
	return &recentSet{max: max, set: make(map[txKey]struct{}, min(max, 1<<16))}
}

func (r *recentSet) has(k txKey) bool { _, ok := r.set[k]; return ok }

func (r *recentSet) add(k txKey) {
	if _, ok := r.set[k]; ok {
		return
	}
	if len(r.ring) < r.max {
		r.ring = append(r.ring, k)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = k
		r.next = (r.next + 1) % r.max
	}
	r.set[k] = struct{}{}
}

package relay

// Policy sync: relays learn new signed policy versions from the members
// attached to them. A member's relay client offers every bundle its policy
// watcher applies (and its recent ones right after each connection, so a
// relay that was down catches up) as POLICY frames on the control stream
// (see wire). The relay trusts nothing in them: the PolicyStore verifies
// each bundle against the relay's own current policy and keeps it where the
// relay's policy watcher applies it; UpdateAuthority then cuts members the
// new version removes, as for any policy change.
//
// Per connection, one transfer at a time, in order, on the reliable stream;
// versions the store does not want are skipped on the first chunk, before
// any memory is set aside or signature checked; bundles over
// MaxPolicyBytes and transfers beyond the per-connection rate are refused.
// Every offer is counted once by result (memberd_relay_policy_offers_total).

import (
	"crypto/sha256"
	"errors"
	"time"

	"github.com/memberd/memberd/relay/wire"
)

// PolicyStore is where a relay keeps the signed policy bundles members
// offer. cmd implements it over the policy package and the relay's policy
// watcher. Both methods are called from connection goroutines, several at
// once: implementations must be safe for concurrent use.
type PolicyStore interface {
	// Wants reports, cheaply and without checking any signature, whether a
	// bundle announced as version with SHA-256 sum is worth receiving: a
	// version newer than what the relay holds, not already taken.
	Wants(version uint64, sum [32]byte) bool
	// Offer verifies bundle (announced as version) against the relay's
	// current policy and, when it is a valid next version, stores it for
	// the relay's policy watcher. It returns nil when stored, an error
	// wrapping ErrPolicyKnown when the relay has that version or a newer
	// one, ErrPolicyRejected when the bundle is not valid (does not parse,
	// signatures, quorum, version chain); any other error is a local
	// failure (e.g. writing the policy folder).
	Offer(version uint64, bundle []byte) error
}

// Errors a PolicyStore wraps.
var (
	ErrPolicyKnown    = errors.New("policy bundle is not newer than the relay's policy")
	ErrPolicyRejected = errors.New("policy bundle rejected")
)

// Policy offer results, the values of the "result" label of
// memberd_relay_policy_offers_total.
const (
	OfferStored    = "stored"     // verified and stored for the relay's watcher
	OfferKnown     = "known"      // not newer than the relay's policy: skipped
	OfferTooLarge  = "too_large"  // over MaxPolicyBytes: refused on the first chunk
	OfferRateLimit = "rate_limit" // the connection offered too often
	OfferMalformed = "malformed"  // bad frame, chunks out of order, wrong sum
	OfferRejected  = "rejected"   // verification failed (signatures, chain, version)
	OfferError     = "error"      // the store failed (e.g. disk)
	OfferIgnored   = "ignored"    // this relay takes no bundles (no PolicyStore)
)

var offerResults = []string{OfferStored, OfferKnown, OfferTooLarge, OfferRateLimit, OfferMalformed, OfferRejected, OfferError, OfferIgnored}

// Defaults for ServerConfig.
const (
	// DefaultPolicyOfferEvery: one checked bundle per connection per this
	// interval, after a burst of policyOfferBurst.
	DefaultPolicyOfferEvery = 10 * time.Second
	policyOfferBurst        = 4
)

// policyAssembler reassembles the POLICY transfer of one connection. It is
// a pure core (time passed in, no I/O) and not safe for concurrent use: only
// the connection's stream reader calls it.
type policyAssembler struct {
	max    int
	rate   *bucket // transfers, not bytes
	cur    *policyTransfer
	skip   [32]byte // sum of the transfer being skipped
	skipOK bool
}

type policyTransfer struct {
	version uint64
	sum     [32]byte
	total   int
	buf     []byte
}

func newPolicyAssembler(max int, every time.Duration, now time.Time) *policyAssembler {
	return &policyAssembler{max: max, rate: newBucket(1/every.Seconds(), policyOfferBurst, now)}
}

// add takes one POLICY part. It returns the bundle once complete (its sum
// checked), and a result to count when the transfer ends here without a
// bundle ("" = nothing to count yet).
func (a *policyAssembler) add(p wire.PolicyPart, wants func(uint64, [32]byte) bool, now time.Time) (bundle []byte, version uint64, result string) {
	if p.Offset == 0 {
		abandoned := a.cur != nil
		a.cur, a.skipOK = nil, false
		skip := func(r string) (bundle []byte, version uint64, result string) {
			a.skip, a.skipOK = p.Sum, true
			return nil, 0, r
		}
		switch {
		case p.Total > a.max:
			return skip(OfferTooLarge)
		case !wants(p.Version, p.Sum):
			return skip(OfferKnown)
		case !a.rate.allow(1, now):
			return skip(OfferRateLimit)
		}
		a.cur = &policyTransfer{version: p.Version, sum: p.Sum, total: p.Total, buf: make([]byte, 0, min(p.Total, 64<<10))}
		if abandoned {
			// The sender started over (its previous transfer was cut):
			// count the lost one, go on with the new one.
			result = OfferMalformed
		}
	} else if a.skipOK && p.Sum == a.skip {
		return nil, 0, ""
	}
	t := a.cur
	if t == nil || p.Sum != t.sum || p.Version != t.version || p.Total != t.total || p.Offset != len(t.buf) {
		a.cur = nil
		a.skip, a.skipOK = p.Sum, true
		return nil, 0, OfferMalformed
	}
	t.buf = append(t.buf, p.Chunk...)
	if len(t.buf) < t.total {
		return nil, 0, result
	}
	a.cur = nil
	if sha256.Sum256(t.buf) != t.sum {
		return nil, 0, OfferMalformed
	}
	return t.buf, t.version, result
}

// policyFrame handles a POLICY frame from member connection p. owned frames
// came in a datagram, where POLICY never travels (no order, no limit).
// Offer runs here, on the connection's reader: a slow store holds up only
// this connection, and the per-connection rate bounds how often.
func (s *Server) policyFrame(p *peer, f wire.Frame, owned bool) {
	part, err := wire.ParsePolicy(f.Body)
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		s.m.offer(OfferTooLarge)
		return
	case err != nil || owned:
		s.m.offer(OfferMalformed)
		return
	case s.cfg.Policy == nil:
		if part.Offset == 0 {
			s.m.offer(OfferIgnored)
		}
		return
	}
	bundle, version, res := p.policy.add(part, s.cfg.Policy.Wants, s.cfg.Now())
	if res != "" {
		s.m.offer(res)
		if res != OfferKnown {
			s.log.Debug("policy bundle offer refused", "peer", p.id, "policy_version", part.Version, "result", res)
		}
	}
	if bundle == nil {
		return
	}
	err = s.cfg.Policy.Offer(version, bundle)
	switch {
	case err == nil:
		s.m.offer(OfferStored)
		s.log.Info("policy bundle from a member verified and stored for this relay's policy watcher", "peer", p.id, "policy_version", version)
	case errors.Is(err, ErrPolicyKnown):
		s.m.offer(OfferKnown)
	case errors.Is(err, ErrPolicyRejected):
		s.m.offer(OfferRejected)
		s.log.Warn("policy bundle offered by a member rejected: keeping the current policy", "peer", p.id, "policy_version", version, "err", err)
	default:
		s.m.offer(OfferError)
		s.log.Error("storing a valid policy bundle failed: check the relay's policy folder", "peer", p.id, "policy_version", version, "err", err)
	}
}

// PolicyOffers returns the policy bundle offers seen so far, by result
// (zeros omitted).
func (s *Server) PolicyOffers() map[string]uint64 { return s.m.offers.snapshot() }

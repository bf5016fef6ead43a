package relayd

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/push"
	"github.com/memberd/memberd/relay"
)

// policyStore is the relay's relay.PolicyStore: the signed bundles
// members offer are verified against the relay's own policy with the policy
// package (quorum of the current admins, version chain, no rollback; the
// sending member is trusted for nothing), and valid ones are written
// atomically into the relay's policy folder, where its watcher verifies them
// again and applies them (then UpdateAuthority cuts removed members).
//
// head is the newest version verified here: the watcher's current policy,
// or a version stored but not applied yet, so that versions offered back to
// back (v2 then v3) verify link by link without waiting for the watcher.
type policyStore struct {
	w   *policy.Watcher
	dir string
	now func() time.Time

	mu     sync.Mutex // one verification and write at a time
	stored *policy.Policy
	sum    [32]byte // of the last bundle stored

	// For Wants, which must not wait behind an Offer's verification and
	// fsync (it runs on other members' connection readers).
	storedVersion atomic.Uint64
	storedSum     atomic.Pointer[[32]byte]
}

var _ relay.PolicyStore = (*policyStore)(nil)

func newPolicyStore(w *policy.Watcher, dir string) *policyStore {
	return &policyStore{w: w, dir: dir, now: time.Now}
}

// headLocked is the newest trusted policy: applied, or stored and verified.
func (s *policyStore) headLocked() *policy.Policy {
	cur := s.w.Current()
	if s.stored != nil && s.stored.Version() > cur.Version() {
		return s.stored
	}
	return cur
}

// Wants implements relay.PolicyStore: a version newer than the head, not
// the bundle stored last. It takes no lock.
func (s *policyStore) Wants(version uint64, sum [32]byte) bool {
	if last := s.storedSum.Load(); last != nil && *last == sum {
		return false
	}
	return version > max(s.w.Current().Version(), s.storedVersion.Load())
}

// Offer implements relay.PolicyStore.
func (s *policyStore) Offer(version uint64, bundle []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	head := s.headLocked()
	if version <= head.Version() || sha256.Sum256(bundle) == s.sum {
		return fmt.Errorf("%w: version %d offered, the relay holds version %d", relay.ErrPolicyKnown, version, head.Version())
	}
	p, err := policy.Parse(bundle)
	if err != nil {
		return fmt.Errorf("%w: %w", relay.ErrPolicyRejected, err)
	}
	if p.Version() != version {
		return fmt.Errorf("%w: offered as version %d but holds version %d", relay.ErrPolicyRejected, version, p.Version())
	}
	if _, err := policy.VerifyAt(head, p, s.now()); err != nil {
		if errors.Is(err, policy.ErrChain) && p.Version() > head.Version()+1 {
			return fmt.Errorf("%w: %w (this relay holds version %d and missed the ones between: members offer their recent versions on connecting; else copy them into the policy folder %s)",
				relay.ErrPolicyRejected, err, head.Version(), s.dir)
		}
		return fmt.Errorf("%w: %w", relay.ErrPolicyRejected, err)
	}
	if _, err := push.Store(s.dir, bundle); err != nil {
		return err
	}
	sum := sha256.Sum256(bundle)
	s.stored, s.sum = p, sum
	s.storedVersion.Store(p.Version())
	s.storedSum.Store(&sum) // a copy: s.sum changes under mu only
	s.w.Reload()
	return nil
}

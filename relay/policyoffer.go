package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/memberd/memberd/relay/wire"
)

// PolicyBundle is a signed policy bundle, exact bytes, and the version it
// holds, for Client.OfferPolicy.
type PolicyBundle struct {
	Version uint64
	Bundle  []byte
}

// MaxOfferedPolicies bounds how many bundles OfferPolicy keeps (the most
// recent ones), so what a connection sends on connecting stays bounded.
const MaxOfferedPolicies = 4

type encodedPolicy struct {
	version uint64
	sum     [32]byte
	frames  [][]byte
}

// OfferPolicy sets the signed policy bundles this appliance applied, oldest
// first, the current one last (a few recent ones let a relay that missed
// versions catch up link by link; only the last MaxOfferedPolicies are
// kept). The client offers the new ones to every relay it is connected to
// and all of them to each relay right after every (re)connection, as POLICY
// frames on the control stream. Relays verify them against their own
// current policy and skip versions they have. It does not block.
func (c *Client) OfferPolicy(bundles []PolicyBundle) error {
	if len(bundles) > MaxOfferedPolicies {
		bundles = bundles[len(bundles)-MaxOfferedPolicies:]
	}
	enc := make([]encodedPolicy, 0, len(bundles))
	for _, b := range bundles {
		if n := len(enc); n > 0 && b.Version <= enc[n-1].version {
			return fmt.Errorf("relay: policy bundles to offer must have growing versions (%d after %d)", b.Version, enc[n-1].version)
		}
		frames, err := wire.PolicyFrames(b.Version, b.Bundle)
		if err != nil {
			return fmt.Errorf("relay: policy version %d: %w", b.Version, err)
		}
		enc = append(enc, encodedPolicy{version: b.Version, sum: sha256.Sum256(b.Bundle), frames: frames})
	}
	c.polMu.Lock()
	c.pol = enc
	close(c.polChanged)
	c.polChanged = make(chan struct{})
	c.polMu.Unlock()
	return nil
}

func (c *Client) policies() ([]encodedPolicy, <-chan struct{}) {
	c.polMu.Lock()
	defer c.polMu.Unlock()
	return c.pol, c.polChanged
}

// offerPolicies sends link l the offered bundles it has not had yet (all of
// them at first), then each new one as it is offered, until l ends.
// Transfers go one after another, never interleaved.
func (c *Client) offerPolicies(ctx context.Context, l *link) {
	sent := map[[32]byte]bool{} // sums sent on l, of the bundles still offered
	for {
		list, changed := c.policies()
		now := make(map[[32]byte]bool, len(list))
		for _, p := range list {
			now[p.sum] = true
			if sent[p.sum] {
				continue
			}
			for _, f := range p.frames {
				// sendCtrl owns what it is given: a copy per link.
				if l.sendCtrl(ctx, bytes.Clone(f)) != nil {
					return
				}
			}
		}
		sent = now
		select {
		case <-changed:
		case <-l.done:
			return
		case <-ctx.Done():
			return
		}
	}
}

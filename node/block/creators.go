package block

import (
	"crypto/ecdsa"
	"fmt"
	"sync"
)

// CreatorCache verifies signatures like VerifyCreatorSignature but keeps the
// public keys of recently seen creators, so that a busy Broadcast path
// parses each client certificate once instead of once per envelope. It is
// bounded: when full, an arbitrary entry is evicted. Safe for concurrent use.
type CreatorCache struct {
	mu  sync.Mutex
	max int
	m   map[string]creatorKey
}

type creatorKey struct {
	mspID string
	pub   *ecdsa.PublicKey
}

// DefaultCreatorCacheSize is NewCreatorCache's size when given 0.
const DefaultCreatorCacheSize = 4096

// NewCreatorCache returns a cache of at most max creators (0: DefaultCreatorCacheSize).
func NewCreatorCache(max int) *CreatorCache {
	if max <= 0 {
		max = DefaultCreatorCacheSize
	}
	return &CreatorCache{max: max, m: make(map[string]creatorKey)}
}

// Verify has VerifyCreatorSignature's contract and errors.
func (c *CreatorCache) Verify(creator, data, sig []byte) error {
	c.mu.Lock()
	k, ok := c.m[string(creator)]
	c.mu.Unlock()
	if !ok {
		mspID, cert, err := CreatorCertificate(creator)
		if err != nil {
			return err
		}
		pub, isEC := cert.PublicKey.(*ecdsa.PublicKey)
		if !isEC {
			return fmt.Errorf("%w: certificate %q of MSP %q has a %T key", ErrUnsupportedKey, cert.Subject, mspID, cert.PublicKey)
		}
		k = creatorKey{mspID: mspID, pub: pub}
		c.mu.Lock()
		if len(c.m) >= c.max {
			for old := range c.m { // map order: an arbitrary victim
				delete(c.m, old)
				break
			}
		}
		c.m[string(creator)] = k
		c.mu.Unlock()
	}
	if err := VerifyECDSA(k.pub, data, sig); err != nil {
		return fmt.Errorf("signer of MSP %q: %w", k.mspID, err)
	}
	return nil
}

// Len returns the number of cached creators.
func (c *CreatorCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

package block

import (
	"errors"
	"testing"
)

func TestCreatorCache(t *testing.T) {
	c := NewCreatorCache(2)
	ids := []*testIdentity{newIdentity(t, "A", "a"), newIdentity(t, "B", "b"), newIdentity(t, "C", "c")}
	for round := range 2 {
		for i, id := range ids {
			env := id.envelope(t, "ch", []byte("x"))
			if _, err := Admit(env, AdmitConfig{Verify: c.Verify}); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			e, _ := ParseEnvelope(env)
			if err := c.Verify(e.SignatureHeader.Creator, []byte("other"), e.Signature); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("cached key accepted a signature over other data: %v", err)
			}
			// A certificate swapped under the same creator bytes is impossible;
			// another identity's signature must not verify.
			if err := c.Verify(ids[(i+1)%3].creator, e.Payload, e.Signature); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("another creator verified the signature: %v", err)
			}
		}
		if c.Len() > 2 {
			t.Fatalf("cache holds %d creators, bound is 2", c.Len())
		}
	}
	if err := c.Verify([]byte("junk"), nil, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("junk creator: %v", err)
	}
	// Same verdicts as the uncached verifier on the Fabric envelopes.
	for _, raw := range loadBlock(t, "vectors-2.block").Data.Data {
		if _, err := Admit(raw, AdmitConfig{Verify: c.Verify}); err != nil {
			t.Fatal(err)
		}
	}
}

package relay

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/memberd/memberd/relay/wire"
)

// parts splits bundle into the POLICY parts a client sends.
func parts(t testing.TB, version uint64, bundle []byte) []wire.PolicyPart {
	t.Helper()
	frames, err := wire.PolicyFrames(version, bundle)
	if err != nil {
		t.Fatal(err)
	}
	var out []wire.PolicyPart
	for _, f := range frames {
		p, err := wire.ParsePolicy(f[wire.HeaderLen:])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func TestPolicyAssembler(t *testing.T) {
	t0 := time.Unix(1000, 0)
	big := bytes.Repeat([]byte("policy "), 6000) // 42 KB, 3 chunks
	wantsNewerThan := func(v uint64) func(uint64, [32]byte) bool {
		return func(x uint64, _ [32]byte) bool { return x > v }
	}
	type step struct {
		part       wire.PolicyPart
		wantBundle bool
		wantResult string
	}
	good := parts(t, 5, big)
	corrupt := parts(t, 5, big)
	corrupt[2].Chunk = bytes.ToUpper(corrupt[2].Chunk) // same length, wrong sum
	tests := []struct {
		name  string
		max   int
		wants func(uint64, [32]byte) bool
		steps []step
	}{
		{"good bundle in three chunks", 1 << 20, wantsNewerThan(4), []step{{good[0], false, ""}, {good[1], false, ""}, {good[2], true, ""}}},
		{"known version skipped on the first chunk, rest ignored", 1 << 20, wantsNewerThan(5), []step{{good[0], false, OfferKnown}, {good[1], false, ""}, {good[2], false, ""}}},
		{"oversize refused on the first chunk", 20 << 10, wantsNewerThan(4), []step{{good[0], false, OfferTooLarge}, {good[1], false, ""}, {good[2], false, ""}}},
		{"chunk out of order", 1 << 20, wantsNewerThan(4), []step{{good[0], false, ""}, {good[2], false, OfferMalformed}, {good[1], false, ""}}},
		{"chunk without a start", 1 << 20, wantsNewerThan(4), []step{{good[1], false, OfferMalformed}, {good[2], false, ""}}},
		{"wrong sum", 1 << 20, wantsNewerThan(4), []step{{corrupt[0], false, ""}, {corrupt[1], false, ""}, {corrupt[2], false, OfferMalformed}}},
		{"restart counts the cut transfer", 1 << 20, wantsNewerThan(4), []step{{good[0], false, ""}, {good[0], false, OfferMalformed}, {good[1], false, ""}, {good[2], true, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newPolicyAssembler(tt.max, time.Second, t0)
			for i, s := range tt.steps {
				b, v, res := a.add(s.part, tt.wants, t0)
				if (b != nil) != s.wantBundle || res != s.wantResult {
					t.Fatalf("step %d: bundle %v result %q, want bundle %v result %q", i, b != nil, res, s.wantBundle, s.wantResult)
				}
				if b != nil && (!bytes.Equal(b, big) || v != 5) {
					t.Fatalf("step %d: bundle of %d bytes version %d differs", i, len(b), v)
				}
			}
		})
	}
	t.Run("rate per connection", func(t *testing.T) {
		a := newPolicyAssembler(1<<20, 10*time.Second, t0)
		small := parts(t, 9, []byte("small bundle"))[0]
		for i := range policyOfferBurst {
			if b, _, res := a.add(small, wantsNewerThan(1), t0); b == nil || res != "" {
				t.Fatalf("offer %d of the burst: %q", i, res)
			}
		}
		if _, _, res := a.add(small, wantsNewerThan(1), t0.Add(time.Second)); res != OfferRateLimit {
			t.Fatalf("beyond the burst: %q, want rate_limit", res)
		}
		// Known versions cost nothing and do not spend the rate.
		if _, _, res := a.add(small, wantsNewerThan(9), t0.Add(time.Second)); res != OfferKnown {
			t.Fatalf("known: %q", res)
		}
		if b, _, _ := a.add(small, wantsNewerThan(1), t0.Add(11*time.Second)); b == nil {
			t.Fatal("not allowed again after the interval")
		}
	})
}

// fakeStore is a PolicyStore over plain bytes: a bundle "v<N> ..." holds
// version N; "bad" in it makes verification fail.
type fakeStore struct {
	mu      sync.Mutex
	version uint64
	stored  [][]byte
}

func (s *fakeStore) Wants(v uint64, _ [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return v > s.version
}

func (s *fakeStore) Offer(v uint64, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case v <= s.version:
		return ErrPolicyKnown
	case bytes.Contains(b, []byte("bad")) || !bytes.HasPrefix(b, fmt.Appendf(nil, "v%d ", v)):
		return fmt.Errorf("%w: signatures", ErrPolicyRejected)
	}
	s.version = v
	s.stored = append(s.stored, bytes.Clone(b))
	return nil
}

func (s *fakeStore) get() (uint64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version, len(s.stored)
}

// TestPolicyOffersReachTheStore: a member's client offers its recent
// bundles on connecting (QUIC and TCP paths) and each new one later; the
// relay hands valid new versions to its store once, skips known ones, and
// counts rejected and oversize offers.
func TestPolicyOffersReachTheStore(t *testing.T) {
	for _, quic := range []bool{true, false} {
		t.Run(map[bool]string{true: "quic", false: "tcp"}[quic], func(t *testing.T) {
			n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
			if !quic {
				n.noQUIC = map[string]bool{"relay-1": true}
			}
			store := &fakeStore{version: 1}
			r := n.startRelay("relay-1", func(c *ServerConfig) { c.Policy = store; c.MaxPolicyBytes = 64 << 10 })
			a := n.member("bank-a", nil)
			big := append([]byte("v3 "), bytes.Repeat([]byte("x"), 40<<10)...) // 3 chunks
			if err := a.OfferPolicy([]PolicyBundle{{1, []byte("v1 genesis")}, {2, []byte("v2 removes bank-c")}, {3, big}}); err != nil {
				t.Fatal(err)
			}
			waitReady(t, a)
			waitFor(t, 5*time.Second, "versions 2 and 3 stored", func() bool { v, _ := store.get(); return v == 3 })
			// Another member offers the same versions: skipped, not stored again.
			b := n.member("bank-b", nil)
			if err := b.OfferPolicy([]PolicyBundle{{2, []byte("v2 removes bank-c")}, {3, big}}); err != nil {
				t.Fatal(err)
			}
			waitReady(t, b)
			waitFor(t, 5*time.Second, "b's offers skipped", func() bool { return r.srv.PolicyOffers()[OfferKnown] >= 3 })
			// Bad signature, then too large, then a good v6.
			a.OfferPolicy([]PolicyBundle{{4, []byte("v4 bad signature")}})
			waitFor(t, 5*time.Second, "rejected counted", func() bool { return r.srv.PolicyOffers()[OfferRejected] == 1 })
			a.OfferPolicy([]PolicyBundle{{5, append([]byte("v5 "), make([]byte, 70<<10)...)}})
			waitFor(t, 5*time.Second, "too_large counted", func() bool { return r.srv.PolicyOffers()[OfferTooLarge] == 1 })
			a.OfferPolicy([]PolicyBundle{{6, []byte("v6 fine")}})
			waitFor(t, 5*time.Second, "v6 stored", func() bool { v, _ := store.get(); return v == 6 })
			_, stored := store.get()
			got := r.srv.PolicyOffers()
			t.Logf("offers: %v", got)
			if stored != 3 || got[OfferStored] != 3 || got[OfferMalformed] != 0 {
				t.Fatalf("stored %d bundles, offers %v: want versions 2, 3, 6 stored once each", stored, got)
			}
			if !bytes.Equal(store.stored[1], big) {
				t.Fatal("the 40 KB bundle arrived altered")
			}
		})
	}
}

// TestPolicyOffersIgnoredWithoutStore: a relay without a PolicyStore (static
// policy) counts offers as ignored and carries on.
func TestPolicyOffersIgnoredWithoutStore(t *testing.T) {
	n := newTestNet(t, []string{"bank-a"}, []string{"relay-1"})
	r := n.startRelay("relay-1", nil)
	a := n.member("bank-a", nil)
	a.OfferPolicy([]PolicyBundle{{2, []byte("v2")}})
	waitReady(t, a)
	waitFor(t, 5*time.Second, "ignored offer counted", func() bool { return r.srv.PolicyOffers()[OfferIgnored] == 1 })
}

func TestOfferPolicyArguments(t *testing.T) {
	n := newTestNet(t, []string{"bank-a"}, []string{"relay-1"})
	a := n.member("bank-a", nil)
	if err := a.OfferPolicy([]PolicyBundle{{2, []byte("x")}, {2, []byte("y")}}); err == nil {
		t.Fatal("versions not growing accepted")
	}
	if err := a.OfferPolicy([]PolicyBundle{{2, nil}}); !errors.Is(err, wire.ErrTooLarge) {
		t.Fatalf("empty bundle: %v", err)
	}
	var many []PolicyBundle
	for v := range uint64(10) {
		many = append(many, PolicyBundle{v + 1, []byte{byte(v)}})
	}
	if err := a.OfferPolicy(many); err != nil {
		t.Fatal(err)
	}
	if l, _ := a.policies(); len(l) != MaxOfferedPolicies || l[0].version != 10-MaxOfferedPolicies+1 {
		t.Fatalf("kept %d bundles from version %d", len(l), l[0].version)
	}
}

// FuzzPolicyAssembler: POLICY bodies a member sends, in any order, never
// make the assembler panic or hand out a bundle larger than its limit or
// whose sum differs from what it announced.
func FuzzPolicyAssembler(f *testing.F) {
	for _, n := range []int{100, wire.PolicyChunk + 10} {
		frames, _ := wire.PolicyFrames(7, bytes.Repeat([]byte("x"), n))
		f.Add(bytes.Join(frames, nil))
		f.Add(bytes.Join(append(frames[1:], frames[0]), nil)) // out of order
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		const max = 8 << 10
		a := newPolicyAssembler(max, time.Millisecond, time.Unix(0, 0))
		r := wire.NewReader(bytes.NewReader(stream), wire.PolicyHeaderLen+wire.PolicyChunk)
		now := time.Unix(0, 0)
		for range 64 {
			fr, err := r.Next()
			if err != nil {
				return
			}
			part, err := wire.ParsePolicy(fr.Body)
			if err != nil {
				continue
			}
			now = now.Add(time.Second)
			bundle, _, _ := a.add(part, func(uint64, [32]byte) bool { return true }, now)
			if bundle != nil && (len(bundle) > max || sha256.Sum256(bundle) != part.Sum) {
				t.Fatalf("bundle of %d bytes handed out (limit %d) or with a wrong sum", len(bundle), max)
			}
		}
	})
}

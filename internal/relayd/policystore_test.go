package relayd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/authority"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
	"github.com/memberd/memberd/policy/push"
	"github.com/memberd/memberd/relay"
	"github.com/memberd/memberd/relay/relaytest"
)

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// TestRelayLearnsPolicyFromMembers: the relay seam with the real policy
// package. Members attached to a relay offer bundles; the relay's store
// verifies them against the relay's own policy. A bad signature, an older
// version and an oversize bundle are refused and counted; a valid v2 that
// removes m3 is stored in the policy folder, applied by the relay's watcher,
// and the relay cuts m3 off.
func TestRelayLearnsPolicyFromMembers(t *testing.T) {
	log := slog.New(slog.NewTextHandler(tLogWriter{t}, nil))
	c := policytest.New(t, 3)
	relayID := testpki.SelfSigned(t, "r1").TLS()
	spki := sha256.Sum256(relayID.Leaf.RawSubjectPublicKeyInfo)
	c.Template.Relays[0].SPKISHA256 = hex.EncodeToString(spki[:])
	v1 := c.Genesis(t)
	dir, state := t.TempDir(), t.TempDir()
	if _, err := push.Store(dir, v1.Marshal()); err != nil {
		t.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.Options{Dir: dir, StateDir: state, Genesis: v1.Hash(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.NewServer(relay.ServerConfig{ID: "r1", Identity: relayID, Authority: authority.Relay(w.Current()),
		Policy: newPolicyStore(w, dir), MaxPolicyBytes: 64 << 10, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	_, cancelSub := w.Subscribe(func(_, p *policy.Policy, _ *policy.Diff) { srv.UpdateAuthority(authority.Relay(p)) })
	defer cancelSub()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := relaytest.Start(t, "127.0.0.1:0", srv, relaytest.Options{NoQUIC: true})
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); r.Stop(); <-done }()

	clients := map[string]*relay.Client{}
	for _, m := range []string{"m1", "m2", "m3"} {
		cl, err := relay.NewClient(relay.ClientConfig{
			Identity:    c.CAs[m].Issue(t, m+"-appliance").TLS(),
			Relays:      []relay.RelayInfo{{ID: "r1", Addr: r.Addr, Pin: relay.PinOf(relayID.Leaf)}},
			QUICTimeout: 50 * time.Millisecond, NoEnvProxy: true, Logger: log.With("member", m)})
		if err != nil {
			t.Fatal(err)
		}
		go cl.Run(context.Background()) // until Close
		defer cl.Close()
		clients[m] = cl
	}
	waitUntil(t, 10*time.Second, func() bool { return len(srv.Members()) == 3 })
	offers := func(r string) uint64 { return srv.PolicyOffers()[r] }
	offer := func(m string, bs ...relay.PolicyBundle) {
		t.Helper()
		if err := clients[m].OfferPolicy(bs); err != nil {
			t.Fatal(err)
		}
	}

	removeM3 := func(d *policy.Document) {
		d.Members = slices.DeleteFunc(d.Members, func(m *policy.Member) bool { return m.ID == "m3" })
		d.Ledger.Consenters = []string{"m1", "m2"}
	}
	v2 := c.Next(t, v1, removeM3, "m1", "m2")
	// Bad signature: m2's vote altered, so only m1's counts (quorum 2 of 3).
	sigs := v2.Signatures()
	bad := policytest.MustParse(t, c.NextDocument(t, v1, removeM3))
	for _, s := range sigs {
		if s.Member == "m2" {
			s.Sig = bytes.Clone(s.Sig)
			s.Sig[len(s.Sig)-1] ^= 1
		}
		bad = bad.WithSignature(s)
	}
	offer("m1", relay.PolicyBundle{Version: 2, Bundle: bad.Marshal()})
	waitUntil(t, 5*time.Second, func() bool { return offers(relay.OfferRejected) == 1 })
	// Older version: the relay holds v1 already.
	offer("m2", relay.PolicyBundle{Version: 1, Bundle: v1.Marshal()})
	waitUntil(t, 5*time.Second, func() bool { return offers(relay.OfferKnown) >= 1 })
	// Oversize: refused on its first chunk, whatever it holds.
	offer("m2", relay.PolicyBundle{Version: 1, Bundle: v1.Marshal()},
		relay.PolicyBundle{Version: 2, Bundle: append(v2.Marshal(), bytes.Repeat([]byte("# padding\n"), 7<<10)...)})
	waitUntil(t, 5*time.Second, func() bool { return offers(relay.OfferTooLarge) == 1 })
	if w.Current().Version() != 1 || len(srv.Members()) != 3 {
		t.Fatalf("after bad offers: relay on policy v%d with members %v", w.Current().Version(), srv.Members())
	}

	// The good v2, offered by m3 itself (whose removal it is): verified,
	// stored, applied, and m3 is cut off.
	offer("m3", relay.PolicyBundle{Version: 2, Bundle: v2.Marshal()})
	waitUntil(t, 10*time.Second, func() bool { return w.Current().Version() == 2 })
	waitUntil(t, 5*time.Second, func() bool { return !slices.Contains(srv.Members(), "m3") })
	if got := offers(relay.OfferStored); got != 1 {
		t.Fatalf("stored %d offers, want 1 (%v)", got, srv.PolicyOffers())
	}
	if _, err := policy.LoadState(state); err != nil {
		t.Fatal(err)
	}
	// m3's reconnections are refused under v2.
	time.Sleep(300 * time.Millisecond)
	if slices.Contains(srv.Members(), "m3") {
		t.Fatal("removed member m3 attached again")
	}
	// The others offering v2 again: skipped (known), nothing stored twice.
	offer("m1", relay.PolicyBundle{Version: 2, Bundle: v2.Marshal()})
	waitUntil(t, 5*time.Second, func() bool { return offers(relay.OfferKnown) >= 2 })
	if got := offers(relay.OfferStored); got != 1 {
		t.Fatalf("stored %d offers, want 1", got)
	}
	t.Logf("offers: %v", srv.PolicyOffers())
}

// TestRelayPolicyStore: the store's verdicts, without a relay.
func TestRelayPolicyStore(t *testing.T) {
	c := policytest.New(t, 3)
	v1 := c.Genesis(t)
	dir, state := t.TempDir(), t.TempDir()
	if _, err := push.Store(dir, v1.Marshal()); err != nil {
		t.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.Options{Dir: dir, StateDir: state, Genesis: v1.Hash()})
	if err != nil {
		t.Fatal(err)
	}
	s := newPolicyStore(w, dir)
	v2 := c.Next(t, v1, func(d *policy.Document) { d.Description = "v2" }, "m1", "m2")
	v3 := c.Next(t, v2, func(d *policy.Document) { d.Description = "v3" }, "m1", "m2")
	v4 := c.Next(t, v3, func(d *policy.Document) { d.Description = "v4" }, "m1", "m2")
	under := c.Next(t, v1, func(d *policy.Document) { d.Description = "under-signed" }, "m1")
	tests := []struct {
		name    string
		version uint64
		bundle  []byte
		want    error
	}{
		{"older", 1, v1.Marshal(), relay.ErrPolicyKnown},
		{"not a bundle", 2, []byte("hello"), relay.ErrPolicyRejected},
		{"version hint lies", 3, v2.Marshal(), relay.ErrPolicyRejected},
		{"under-signed", 2, under.Marshal(), relay.ErrPolicyRejected},
		{"gap", 3, v3.Marshal(), relay.ErrPolicyRejected},
		{"v2", 2, v2.Marshal(), nil},
		{"v2 again before the watcher applied it", 2, v2.Marshal(), relay.ErrPolicyKnown},
		{"v3 right after v2, before the watcher applied v2", 3, v3.Marshal(), nil},
		{"v4", 4, v4.Marshal(), nil},
	}
	for _, tt := range tests {
		err := s.Offer(tt.version, tt.bundle)
		if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
			t.Fatalf("%s: Offer = %v, want %v", tt.name, err, tt.want)
		}
		t.Logf("%s: %v", tt.name, err)
	}
	if s.Wants(4, sha256.Sum256(v4.Marshal())) || !s.Wants(5, [32]byte{1}) {
		t.Fatal("Wants does not follow the stored head")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, 10*time.Second, func() bool { return w.Current().Version() == 4 })
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

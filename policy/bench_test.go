package policy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// fiftyMembers returns a 50-member genesis and a version 2 signed by 26
// members (a bare majority).
func fiftyMembers(b *testing.B) (g, v2 *policy.Policy) {
	c := policytest.New(b, 50)
	g = c.Genesis(b)
	v2 = c.Next(b, g, func(d *policy.Document) { d.Members = append(d.Members, c.NewMember(b, "m51")) }, policytest.Members(26)...)
	return g, v2
}

// BenchmarkVerify50Members26Sigs: Verify of an amendment (admit a member) to a
// 50-member policy carrying 26 signatures.
func BenchmarkVerify50Members26Sigs(b *testing.B) {
	g, v2 := fiftyMembers(b)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := policy.VerifyAt(g, v2, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyBaseline26ECDSA: the floor for the benchmark above, 26 bare
// ECDSA P-256 verifications.
func BenchmarkVerifyBaseline26ECDSA(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := policy.SignedDigest([]byte("doc"))
	sig, _ := ecdsa.SignASN1(rand.Reader, k, d)
	b.ResetTimer()
	for range b.N {
		for range 26 {
			if !ecdsa.VerifyASN1(&k.PublicKey, d, sig) {
				b.Fatal("verify")
			}
		}
	}
}

// BenchmarkParse50Members: strict parse and validation of a 50-member bundle
// with 26 signatures.
func BenchmarkParse50Members(b *testing.B) {
	_, v2 := fiftyMembers(b)
	data := v2.Marshal()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := policy.Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkWatcherLatency: from a valid bundle renamed into the policy folder
// to every subscriber notified, over 200 updates per iteration, with the
// default options (20ms debounce). Reports p50 and p99 in ms.
func BenchmarkWatcherLatency(b *testing.B) {
	const updates = 200
	c := policytest.New(b, 5)
	g := c.Genesis(b)
	dir, state := b.TempDir(), b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "v1.yaml"), g.Marshal(), 0o644); err != nil {
		b.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.Options{Dir: dir, StateDir: state, Genesis: g.Hash()})
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan time.Time, 1)
	for i := range 3 {
		w.Subscribe(func(_, _ *policy.Policy, _ *policy.Diff) {
			if i == 2 {
				got <- time.Now()
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond) // let Run arm the watch

	prev := g
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		vs := make([][]byte, updates)
		for i := range vs {
			prev = c.Next(b, prev, describe(fmt.Sprint("v", prev.Version()+1)), "m1", "m2", "m3")
			vs[i] = prev.Marshal()
		}
		b.StartTimer()
		for i, data := range vs {
			name := fmt.Sprintf("u%d.yaml", i%4) // overwrite a few names, as a real folder would
			tmp := filepath.Join(dir, ".tmp")
			if err := os.WriteFile(tmp, data, 0o644); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
				b.Fatal(err)
			}
			select {
			case t1 := <-got:
				lat = append(lat, t1.Sub(t0))
			case <-time.After(10 * time.Second):
				b.Fatalf("update %d not applied", i)
			}
		}
	}
	b.ReportMetric(float64(percentile(lat, 0.50))/1e6, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99))/1e6, "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkFsnotifyRenameBaseline: the floor for the benchmark above, from a
// rename to the bare fsnotify event (no debounce, no verification).
func BenchmarkFsnotifyRenameBaseline(b *testing.B) {
	dir := b.TempDir()
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		b.Fatal(err)
	}
	defer fw.Close()
	if err := fw.Add(dir); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for i := range b.N * 200 {
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
		dst := filepath.Join(dir, fmt.Sprintf("u%d.yaml", i%4))
		for ev := range drain(fw) { // events of the write
			_ = ev
		}
		t0 := time.Now()
		if err := os.Rename(tmp, dst); err != nil {
			b.Fatal(err)
		}
		for ev := range fw.Events {
			if ev.Name == dst && ev.Has(fsnotify.Create) {
				lat = append(lat, time.Since(t0))
				break
			}
		}
	}
	b.ReportMetric(float64(percentile(lat, 0.50))/1e6, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99))/1e6, "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// drain yields the events already queued.
func drain(fw *fsnotify.Watcher) func(func(fsnotify.Event) bool) {
	return func(yield func(fsnotify.Event) bool) {
		for {
			select {
			case ev := <-fw.Events:
				if !yield(ev) {
					return
				}
			case <-time.After(2 * time.Millisecond):
				return
			}
		}
	}
}

// BenchmarkMemberForCertificate50: which of 50 members a TLS peer is (the
// relay's per-handshake check), against a revocation list of 100 serials.
func BenchmarkMemberForCertificate50(b *testing.B) {
	c := policytest.New(b, 50)
	for i := range 100 {
		c.Template.Revocations.Certificates = append(c.Template.Revocations.Certificates,
			&policy.RevokedCert{Member: "m7", Serial: fmt.Sprint(1000 + i)})
	}
	p := c.Genesis(b)
	leaf := c.CAs["m42"].Issue(b, "node.m42").Cert
	chains := [][]*x509.Certificate{{leaf}}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if m, err := p.MemberForCertificateAt(chains, now); err != nil || m.ID != "m42" {
			b.Fatal(err)
		}
	}
}

// BenchmarkCertVerifyBaseline: the floor for the benchmark above, one bare
// x509 verification against the right CA.
func BenchmarkCertVerifyBaseline(b *testing.B) {
	ca := testpki.NewCA(b, "ca")
	leaf := ca.Issue(b, "leaf").Cert
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	opts := x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	b.ResetTimer()
	for range b.N {
		if _, err := leaf.Verify(opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllowed: an ACL decision in a 50-member policy with 60 rules
// (the tunnel's per-connection check).
func BenchmarkAllowed(b *testing.B) {
	c := policytest.New(b, 50)
	c.Template.ACL = nil
	for i := 1; i <= 50; i++ {
		c.Template.ACL = append(c.Template.ACL, &policy.ACLRule{From: []string{fmt.Sprint("m", i)}, To: []string{"role:consenter"},
			Ports: []policy.PortRange{{Lo: 9000, Hi: 9000}}})
	}
	for range 10 {
		c.Template.ACL = append(c.Template.ACL, &policy.ACLRule{From: []string{"role:observer"}, To: []string{"*"}, Ports: []policy.PortRange{{Lo: 1, Hi: 2}}})
	}
	p := c.Genesis(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if !p.Allowed("m50", "m1", 9000) || p.Allowed("m50", "m1", uint16(9001+i%10)) {
			b.Fatal("wrong decision")
		}
	}
}

// BenchmarkSaveStateBaseline: the durable write (temp file, fsync, rename,
// fsync folder) that every applied version waits for before the swap; the
// floor of BenchmarkWatcherLatency besides the debounce. Reports p50/p99.
func BenchmarkSaveStateBaseline(b *testing.B) {
	c := policytest.New(b, 5)
	g := c.Genesis(b)
	dir := b.TempDir()
	var lat []time.Duration
	for range b.N * 200 {
		t0 := time.Now()
		if err := policy.SaveState(dir, g); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.ReportMetric(float64(percentile(lat, 0.50))/1e6, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99))/1e6, "p99-ms")
	b.ReportMetric(0, "ns/op")
}

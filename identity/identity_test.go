package identity_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/identity"
)

type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func (ca *testCA) issue(t *testing.T, key crypto.Signer, cn string, now time.Time) []byte {
	t.Helper()
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn}})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := hsm.SignCSR(ca.cert, ca.key, csr, hsm.LeafConfig{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return hsm.EncodePEM("CERTIFICATE", leaf.Raw, ca.cert.Raw)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // atomic, as deploy tools do
		t.Fatal(err)
	}
}

func tlsHandshake(t *testing.T, id *identity.Identity, roots *x509.CertPool) error {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	srv := tls.Server(c1, &tls.Config{Certificates: []tls.Certificate{id.TLSCertificate()}, MinVersion: tls.VersionTLS13})
	cli := tls.Client(c2, &tls.Config{RootCAs: roots, ServerName: id.Certificate.Subject.CommonName, MinVersion: tls.VersionTLS13})
	var g errgroup.Group
	g.Go(srv.Handshake)
	g.Go(cli.Handshake)
	return g.Wait()
}

// newToken makes a SoftHSM token with two TLS keys and a CA key.
func newToken(t *testing.T) (tok *hsmtest.Token, ca *testCA, k1, k2 *hsm.KeyInfo, now time.Time) {
	t.Helper()
	tok = hsmtest.NewToken(t, "member-a")
	caKey := tok.NewKey(t, "ca")
	k1 = tok.GenerateKey(t, "tls-1")
	k2 = tok.GenerateKey(t, "tls-2")
	now = time.Now()
	caCert, err := hsm.NewCACertificate(caKey, hsm.CAConfig{Subject: pkix.Name{CommonName: "Member A CA"}, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return tok, &testCA{cert: caCert, key: caKey}, k1, k2, now
}

func TestIdentityLiveSwitch(t *testing.T) {
	tok, ca, k1, k2, now := newToken(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, identity.File), fmt.Appendf(nil, "keys:\n  - %q\n  - %q\n", k1.URI, k2.URI))
	s1, err := hsm.OpenSigner(k1.URI, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "cert-1.pem"), ca.issue(t, s1, "node1.member-a", now))
	s1.Close()

	p, err := identity.NewProvider(dir, &identity.Options{Debounce: 20 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	first := p.Current()
	if first.KeyURI != k1.URI || first.Certificate.Subject.CommonName != "node1.member-a" || len(first.Chain) != 1 {
		t.Fatalf("first identity = %s %s chain %d", first.KeyURI, first.Certificate.Subject, len(first.Chain))
	}
	if err := tlsHandshake(t, first, roots); err != nil {
		t.Fatalf("TLS with the first identity: %v", err)
	}

	switched := make(chan [2]*identity.Identity, 4)
	_, cancelSub := p.Subscribe(func(old, new *identity.Identity) { switched <- [2]*identity.Identity{old, new} })
	defer cancelSub()

	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return p.Run(ctx) })
	defer func() {
		cancel()
		if err := g.Wait(); !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
		goleak.VerifyNone(t, goleak.IgnoreCurrent())
	}()

	// Bad input: a broken identity.yaml and a garbage certificate keep the
	// current identity.
	writeFile(t, filepath.Join(dir, "junk.pem"), []byte("not a certificate"))
	if err := p.Reload(); err != nil {
		t.Fatalf("reload with a junk certificate file: %v", err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, identity.File))
	writeFile(t, filepath.Join(dir, identity.File), []byte("keys: [unclosed\n"))
	if err := p.Reload(); !errors.Is(err, identity.ErrNoIdentity) {
		t.Fatalf("reload with broken identity.yaml: %v", err)
	}
	if p.Current() != first {
		t.Fatal("identity changed on bad input")
	}
	writeFile(t, filepath.Join(dir, identity.File), good)

	// A certificate for a key that is not listed is ignored.
	other := tok.NewKey(t, "unlisted")
	writeFile(t, filepath.Join(dir, "other.pem"), ca.issue(t, other, "intruder", now.Add(time.Second)))

	// Rotation: a newer certificate for the second HSM key.
	s2, err := hsm.OpenSigner(k2.URI, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "cert-2.pem"), ca.issue(t, s2, "node1.member-a", now.Add(2*time.Second)))
	s2.Close()

	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-switched:
			if ev[0] != first {
				t.Fatalf("old identity in notification is not the first one")
			}
			if ev[1].KeyURI != k2.URI {
				t.Fatalf("switched to %s, want %s", ev[1].KeyURI, k2.URI)
			}
			if p.Current() != ev[1] {
				t.Fatal("Current() is not the notified identity")
			}
			if err := tlsHandshake(t, p.Current(), roots); err != nil {
				t.Fatalf("TLS with the new identity: %v", err)
			}
			// A server using GetCertificate serves the new identity.
			c1, c2 := net.Pipe()
			srv := tls.Server(c1, &tls.Config{GetCertificate: p.GetCertificate, MinVersion: tls.VersionTLS13})
			cli := tls.Client(c2, &tls.Config{RootCAs: roots, ServerName: "node1.member-a", MinVersion: tls.VersionTLS13})
			var hg errgroup.Group
			hg.Go(srv.Handshake)
			hg.Go(cli.Handshake)
			if err := hg.Wait(); err != nil {
				t.Fatalf("TLS through GetCertificate: %v", err)
			}
			if got := cli.ConnectionState().PeerCertificates[0]; !got.Equal(ev[1].Certificate) {
				t.Fatal("GetCertificate did not serve the new identity")
			}
			c1.Close()
			c2.Close()
			// The old identity still works (overlap).
			if err := tlsHandshake(t, first, roots); err != nil {
				t.Fatalf("TLS with the old identity after the switch: %v", err)
			}
			return
		case <-deadline:
			t.Fatalf("no identity switch within 10s; current %s", p.Current().KeyURI)
		}
	}
}

func TestIdentityNoMatch(t *testing.T) {
	tok := hsmtest.NewToken(t, "member-a")
	k := tok.GenerateKey(t, "tls")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, identity.File), fmt.Appendf(nil, "key: %q\n", k.URI))
	if _, err := identity.NewProvider(dir, nil); !errors.Is(err, identity.ErrNoIdentity) {
		t.Fatalf("no certificate: %v, want ErrNoIdentity", err)
	}
	writeFile(t, filepath.Join(dir, identity.File), fmt.Appendf(nil, "key: %q\nkeyz: x\n", k.URI))
	if _, err := identity.NewProvider(dir, nil); !errors.Is(err, identity.ErrNoIdentity) || !strings.Contains(err.Error(), "line 2: field keyz not found") {
		t.Fatalf("unknown field: %v, want ErrNoIdentity naming line 2 and keyz", err)
	}
}

// TestIdentitySymlinkSwapAndSubscribe: the folder is a Kubernetes Secret
// volume (files are symlinks through "..data", swapped atomically).
// Subscribe hands back the identity in force, so a caller that subscribes
// after a switch neither misses it nor needs to look again; Close ends Run
// with ErrClosed.
func TestIdentitySymlinkSwapAndSubscribe(t *testing.T) {
	_, ca, k1, k2, now := newToken(t)
	dir := t.TempDir()
	version := func(name string, k *hsm.KeyInfo, notBefore time.Time) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		s, err := hsm.OpenSigner(k.URI, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		writeFile(t, filepath.Join(dir, name, "cert.pem"), ca.issue(t, s, "node1.member-a", notBefore))
		writeFile(t, filepath.Join(dir, name, identity.File), fmt.Appendf(nil, "key: %q\n", k.URI))
	}
	symlink := func(old, new string) {
		t.Helper()
		if err := os.Symlink(old, filepath.Join(dir, new)); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", k1, now)
	symlink("..v1", "..data")
	symlink("..data/cert.pem", "cert.pem")
	symlink("..data/"+identity.File, identity.File)

	p, err := identity.NewProvider(dir, &identity.Options{Debounce: 20 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	first := p.Current()
	if first.KeyURI != k1.URI {
		t.Fatalf("first identity uses %s, want %s", first.KeyURI, k1.URI)
	}
	switched := make(chan *identity.Identity, 4)
	cur, cancelSub := p.Subscribe(func(_, new *identity.Identity) { switched <- new })
	defer cancelSub()
	if cur != first {
		t.Fatal("Subscribe did not hand back the identity in force")
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()

	version("..v2", k2, now.Add(time.Second))
	symlink("..v2", "..data_tmp")
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	var second *identity.Identity
	select {
	case second = <-switched:
	case <-time.After(10 * time.Second):
		t.Fatalf("no switch after the ..data swap; current %s", p.Current().KeyURI)
	}
	if second.KeyURI != k2.URI {
		t.Fatalf("switched to %s, want %s", second.KeyURI, k2.URI)
	}
	cur2, cancel2 := p.Subscribe(func(_, _ *identity.Identity) {})
	cancel2()
	if cur2 != second {
		t.Fatal("a late Subscribe did not hand back the switched identity")
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, identity.ErrClosed) {
			t.Fatalf("Run after Close: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end Run")
	}
	if _, err := p.GetCertificate(nil); !errors.Is(err, identity.ErrNoIdentity) {
		t.Fatalf("GetCertificate after Close: %v", err)
	}
}

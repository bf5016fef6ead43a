package appliance

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
)

// TestLedgerAdminEndpoint serves a handler as ledger.admin does, without a
// consortium: an admin certificate of client_ca gets through; no client
// certificate, one without the OU, or one of another CA is refused in the
// handshake; insecure_plain_http serves plain HTTP.
func TestLedgerAdminEndpoint(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c, err := hsm.NewCACertificate(k, hsm.CAConfig{Subject: pkix.Name{CommonName: name}, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	issue := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn, ou string, ips ...net.IP) tls.Certificate {
		c, k := hsmtest.IssueLeaf(t, ca, caKey, cn, ou, ips...)
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
	}
	ca, caKey := newCA("member CA")
	other, otherKey := newCA("other CA")
	writeCert(t, filepath.Join(dir, "ca.pem"), ca)
	server := issue(ca, caKey, "node", "orderer", net.IPv4(127, 0, 0, 1))
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	hello := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello") })
	cfg := &Config{Dir: dir}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	a := LedgerAdminConfig{Listen: "127.0.0.1:0", ClientCA: "ca.pem"}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := openLedgerAdmin(cfg, a, hello, func() *tls.Certificate { return &server }, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.serve() }()
	defer func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("serve after Close: %v", err)
		}
	}()
	get := func(cert *tls.Certificate) (string, error) {
		tc := &tls.Config{RootCAs: roots}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
		resp, err := c.Get("https://" + srv.Addr() + "/participation/v1/channels")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	admin := issue(ca, caKey, "alice", "admin")
	if body, err := get(&admin); err != nil || body != "hello" {
		t.Fatalf("admin certificate: %q %v", body, err)
	}
	client := issue(ca, caKey, "app", "client")
	foreign := issue(other, otherKey, "mallory", "admin")
	for name, c := range map[string]*tls.Certificate{"no certificate": nil, "OU=client": &client, "other CA": &foreign} {
		if body, err := get(c); err == nil {
			t.Errorf("%s: served %q, want a refused handshake", name, body)
		} else if !strings.Contains(err.Error(), "tls") {
			t.Errorf("%s: %v, want a TLS error", name, err)
		}
	}

	// A missing client_ca is an error naming the key.
	bad := LedgerAdminConfig{Listen: "127.0.0.1:0", ClientCA: "nope.pem"}
	if _, err := openLedgerAdmin(cfg, bad, hello, func() *tls.Certificate { return &server }, log); err == nil || !strings.Contains(err.Error(), "ledger.admin.client_ca") {
		t.Fatalf("missing client_ca file: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "empty.pem"), []byte("nothing"), 0o644)
	bad.ClientCA = "empty.pem"
	if _, err := openLedgerAdmin(cfg, bad, hello, func() *tls.Certificate { return &server }, log); err == nil || !strings.Contains(err.Error(), "ledger.admin.client_ca") {
		t.Fatalf("client_ca without a certificate: %v", err)
	}

	// Development: plain HTTP on loopback, asked for by name.
	plain := LedgerAdminConfig{Listen: "127.0.0.1:0", InsecurePlainHTTP: true}
	if err := plain.validate(); err != nil {
		t.Fatal(err)
	}
	ps, err := openLedgerAdmin(cfg, plain, hello, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	pdone := make(chan error, 1)
	go func() { pdone <- ps.serve() }()
	resp, err := http.Get("http://" + ps.Addr() + "/participation/v1/channels")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ps.Close()
	if string(b) != "hello" {
		t.Fatalf("plain HTTP: %q", b)
	}
	if err := <-pdone; err != nil {
		t.Fatal(err)
	}
}

func writeCert(t *testing.T, path string, c *x509.Certificate) {
	if err := os.WriteFile(path, hsm.EncodePEM("CERTIFICATE", c.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
}

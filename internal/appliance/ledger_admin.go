package appliance

// The channel participation API (osnadmin) of the ledger: ledger.admin in
// memberd.yaml. It is served as Fabric serves its orderer admin endpoint:
// HTTPS on its own address, the server certificate being the appliance's
// HSM identity (the same one as on ledger.listen), client certificates
// REQUIRED and verified against the CA certificates of ledger.admin.client_ca.
// memberd also wants the OU ledger.admin.client_ou (default "admin") in the
// client certificate: the member CA issues node and client certificates too,
// and only its admins may remove the channel (stock Fabric checks the CA
// only). Without a ledger.admin section the API is not served at all.
//
// Plain HTTP exists only with insecure_plain_http: true, for development,
// and only on a loopback address: any process of the host can then remove
// the channel, so it must be asked for by name and never reach a network.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/memberd/memberd/hsm"
)

// Defaults of ledger.admin.
const (
	DefaultLedgerAdminListen   = "127.0.0.1:9443" // Fabric's orderer Admin.ListenAddress
	DefaultLedgerAdminClientOU = "admin"
)

// LedgerAdminConfig is the ledger.admin section of memberd.yaml.
type LedgerAdminConfig struct {
	Listen            string `yaml:"listen"`              // HTTPS address; "" = 127.0.0.1:9443
	ClientCA          string `yaml:"client_ca"`           // PEM CA certificate(s) of the admins; required
	ClientOU          string `yaml:"client_ou"`           // OU a client certificate must carry; "" = admin
	InsecurePlainHTTP bool   `yaml:"insecure_plain_http"` // development only: no TLS, loopback listen only
}

// validate applies the defaults and checks the section.
func (a *LedgerAdminConfig) validate() error {
	if a.Listen == "" {
		a.Listen = DefaultLedgerAdminListen
	}
	if a.ClientOU == "" {
		a.ClientOU = DefaultLedgerAdminClientOU
	}
	host, _, err := net.SplitHostPort(a.Listen)
	if err != nil {
		return fmt.Errorf("key ledger.admin.listen: %q is not host:port", a.Listen)
	}
	if a.InsecurePlainHTTP {
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("key ledger.admin.insecure_plain_http: plain HTTP is allowed only on a loopback address, but ledger.admin.listen is %q: "+
				"use 127.0.0.1:PORT, or remove insecure_plain_http and set ledger.admin.client_ca", a.Listen)
		}
		return nil
	}
	if a.ClientCA == "" {
		return errors.New("key ledger.admin.client_ca: required (PEM file of the CA certificate(s) that issue the admins' client certificates, e.g. the member CA ca.pem)")
	}
	return nil
}

// ledgerAdmin is the running participation server.
type ledgerAdmin struct {
	ln  net.Listener
	srv *http.Server
	tls bool
}

// openLedgerAdmin binds ledger.admin.listen and builds the server of
// handler; cert gives the current server certificate. Nothing is served
// until serve.
func openLedgerAdmin(cfg *Config, a LedgerAdminConfig, handler http.Handler, cert func() *tls.Certificate, log *slog.Logger) (*ledgerAdmin, error) {
	var tc *tls.Config
	if !a.InsecurePlainHTTP {
		pool, err := loadClientCAs(cfg.Path(a.ClientCA))
		if err != nil {
			return nil, fmt.Errorf("%w: key ledger.admin.client_ca: %w", ErrLedger, err)
		}
		tc = adminTLS(pool, a.ClientOU, cert, log)
	}
	ln, err := net.Listen("tcp", a.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: channel participation API on %s (key ledger.admin.listen): %w", ErrLedger, a.Listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/participation/v1/", handler)
	srv := &http.Server{Handler: mux, TLSConfig: tc, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)} // refused handshakes
	if a.InsecurePlainHTTP {
		log.Warn("INSECURE: ledger.admin.insecure_plain_http serves the channel participation API without TLS or client certificates; any local process can remove the channel",
			"listen", ln.Addr().String())
	}
	return &ledgerAdmin{ln: ln, srv: srv, tls: tc != nil}, nil
}

// loadClientCAs reads a PEM file of CA certificates.
func loadClientCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := hsm.ParseCertificatesPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no CERTIFICATE", path)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// adminTLS requires a client certificate that chains to pool and carries
// OU ou; the server presents cert().
func adminTLS(pool *x509.CertPool, ou string, cert func() *tls.Certificate, log *slog.Logger) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert(), nil },
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("no verified client certificate")
			}
			leaf := cs.VerifiedChains[0][0]
			if !slices.Contains(leaf.Subject.OrganizationalUnit, ou) {
				log.Warn("refused a channel participation client: its certificate lacks the OU of ledger.admin.client_ou",
					"subject", leaf.Subject.String(), "want_ou", ou)
				return fmt.Errorf("client certificate %q has no OU=%s (key ledger.admin.client_ou)", leaf.Subject.String(), ou)
			}
			return nil
		},
	}
}

// serve serves until Close; it returns nil after Close.
func (a *ledgerAdmin) serve() error {
	var err error
	if a.tls {
		err = a.srv.ServeTLS(a.ln, "", "")
	} else {
		err = a.srv.Serve(a.ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%w: channel participation API on %s: %w", ErrLedger, a.ln.Addr(), err)
}

// Addr is the bound address.
func (a *ledgerAdmin) Addr() string { return a.ln.Addr().String() }

// Close stops the server and closes the listener.
func (a *ledgerAdmin) Close() {
	a.srv.Close()
	a.ln.Close()
}

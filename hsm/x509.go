package hsm

// Certificates: CSRs made with an HSM key, and a small member CA (a CA
// certificate and CSR signing). Pure functions: time is an input.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// CSRRequest is what goes into a certificate signing request.
type CSRRequest struct {
	// Subject: CommonName required. OrganizationalUnit carries the Fabric
	// role (orderer, peer, admin, client) that a NodeOUs MSP reads.
	Subject  pkix.Name
	DNSNames []string
	IPs      []net.IP
}

// Validate checks the request.
func (r *CSRRequest) Validate() error {
	if r.Subject.CommonName == "" {
		return errors.New("CSR: a common name (CN) is required")
	}
	return nil
}

// CreateCSR makes a PKCS #10 request signed by s (ECDSA with SHA-256) and
// returns it DER encoded.
func CreateCSR(s crypto.Signer, req CSRRequest) ([]byte, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if _, ok := s.Public().(*ecdsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: CSR needs an ECDSA key, got %T", ErrWrongKeyType, s.Public())
	}
	tmpl := &x509.CertificateRequest{Subject: req.Subject, DNSNames: req.DNSNames, IPAddresses: req.IPs,
		SignatureAlgorithm: x509.ECDSAWithSHA256}
	return x509.CreateCertificateRequest(rand.Reader, tmpl, s)
}

// CAConfig describes a member CA certificate.
type CAConfig struct {
	Subject  pkix.Name     // CommonName required
	Validity time.Duration // default 10 years
	Now      time.Time     // NotBefore = Now - 5 min; required
}

// NewCACertificate makes a self-signed CA certificate for the key s
// (KeyUsage cert sign + CRL sign, path length 0: it signs leaves only).
func NewCACertificate(s crypto.Signer, cfg CAConfig) (*x509.Certificate, error) {
	if cfg.Subject.CommonName == "" {
		return nil, errors.New("CA: a common name (CN) is required")
	}
	if cfg.Now.IsZero() {
		return nil, errors.New("CA: Now is required")
	}
	if cfg.Validity <= 0 {
		cfg.Validity = 10 * 365 * 24 * time.Hour
	}
	ski, err := subjectKeyID(s.Public())
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: cfg.Subject,
		NotBefore: cfg.Now.Add(-5 * time.Minute), NotAfter: cfg.Now.Add(cfg.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
		SubjectKeyId: ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
	if err != nil {
		return nil, fmt.Errorf("CA: creating certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// LeafConfig says how SignCSR issues a certificate.
type LeafConfig struct {
	Validity time.Duration // default 1 year; never beyond the CA's NotAfter
	Now      time.Time     // required
}

// SignCSR verifies a DER CSR and issues a leaf certificate for its key and
// subject (its organizational units included) and SANs (DNS names and IP
// addresses), signed by the CA (caCert, caKey), with the usages memberd needs:
// digital signature, TLS server and TLS client authentication.
func SignCSR(caCert *x509.Certificate, caKey crypto.Signer, csrDER []byte, cfg LeafConfig) (*x509.Certificate, error) {
	if cfg.Now.IsZero() {
		return nil, errors.New("CA sign: Now is required")
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("CA sign: parsing CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CA sign: CSR signature does not verify: %w", err)
	}
	if csr.Subject.CommonName == "" {
		return nil, errors.New("CA sign: CSR has no common name")
	}
	if !caCert.IsCA {
		return nil, fmt.Errorf("CA sign: certificate %q is not a CA", caCert.Subject.CommonName)
	}
	if !PublicKeysEqual(caCert.PublicKey, caKey.Public()) {
		return nil, errors.New("CA sign: the CA key does not match the CA certificate")
	}
	if cfg.Validity <= 0 {
		cfg.Validity = 365 * 24 * time.Hour
	}
	notAfter := cfg.Now.Add(cfg.Validity)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	ski, err := subjectKeyID(csr.PublicKey)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: csr.Subject,
		DNSNames: csr.DNSNames, IPAddresses: csr.IPAddresses,
		NotBefore: cfg.Now.Add(-5 * time.Minute), NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: false,
		SubjectKeyId: ski, AuthorityKeyId: caCert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, csr.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("CA sign: %w", err)
	}
	return x509.ParseCertificate(der)
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	h := sha1.Sum(der)
	return h[:], nil
}

// PublicKeysEqual reports whether a and b are the same public key (false
// when a cannot compare itself).
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// EncodePEM returns DER blocks as PEM of the given type.
func EncodePEM(typ string, ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	return out
}

// ParseCertificatesPEM reads every CERTIFICATE block of a PEM file, in order.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return certs, nil
}

// ParseCSRPEM reads the first CERTIFICATE REQUEST block and returns its DER.
func ParseCSRPEM(b []byte) ([]byte, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no CERTIFICATE REQUEST PEM block")
		}
		if blk.Type == "CERTIFICATE REQUEST" || blk.Type == "NEW CERTIFICATE REQUEST" {
			return blk.Bytes, nil
		}
	}
}

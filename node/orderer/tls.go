package orderer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/memberd/memberd/policy"
)

// TLSCertificate returns a tls.Certificate for id; its PrivateKey is id's
// crypto.Signer, so the key stays in the HSM.
func TLSCertificate(id Identity, chain ...*x509.Certificate) tls.Certificate {
	c := tls.Certificate{Certificate: [][]byte{id.Cert.Raw}, PrivateKey: id.Signer, Leaf: id.Cert}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// ServerTLS returns the gRPC server's TLS config: the node's identity, TLS 1.3
// and, when mutual is set, a client certificate that must be issued by the CA
// of a member of the current policy (checked live on every handshake, so a
// removed member is refused at once).
func ServerTLS(cert tls.Certificate, pol func() *policy.Policy, mutual bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if mutual {
		c.ClientAuth = tls.RequireAnyClientCert
		c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			chain, err := parseChain(raw)
			if err != nil {
				return err
			}
			p := pol()
			if p == nil {
				return fmt.Errorf("%w: no policy loaded", ErrForbidden)
			}
			if _, err := p.MemberForCertificate([][]*x509.Certificate{chain}); err != nil {
				return fmt.Errorf("%w: TLS client %q: %v", ErrForbidden, chain[0].Subject.CommonName, err)
			}
			return nil
		}
	}
	return c
}

// ClientTLS returns a client TLS config that authenticates the server by its
// certificate chain to roots (member CAs; the host name is not checked, as
// nodes are named by member, not by DNS) and presents cert when non-nil.
func ClientTLS(cert *tls.Certificate, roots *x509.CertPool) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			chain, err := parseChain(raw)
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, c := range chain[1:] {
				inter.AddCert(c)
			}
			_, err = chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

func parseChain(raw [][]byte) ([]*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, errors.New("no certificate presented")
	}
	out := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

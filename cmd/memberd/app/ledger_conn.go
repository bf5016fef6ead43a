package app

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/node/orderer"
)

// ledgerFlags: the identity that signs requests and the connection to a node.
type ledgerFlags struct {
	key      keyFlags
	certFile string
	mspID    string
	addr     string
	channel  string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	plain    bool
	timeout  time.Duration
}

func (f *ledgerFlags) register(c *cobra.Command) {
	f.key.register(c, "the identity's signing key", true)
	c.Flags().StringVar(&f.certFile, "cert", "", "the identity's certificate (PEM), issued by a member CA")
	c.Flags().StringVar(&f.mspID, "msp-id", "", "the identity's member MSP id (as in the policy)")
	c.Flags().StringVar(&f.addr, "orderer", "127.0.0.1:7050", "the node's ledger gRPC address")
	c.Flags().StringVar(&f.channel, "channel", "", "the channel (the policy's ledger.channel)")
	c.Flags().StringVar(&f.tlsCA, "tls-ca", "", "PEM CA certificate(s) that issued the node's TLS certificate (enables TLS)")
	c.Flags().StringVar(&f.tlsCert, "tls-cert", "", "client TLS certificate for mutual TLS (PEM; default: --cert)")
	c.Flags().StringVar(&f.tlsKey, "tls-key", "", "client TLS key URI for mutual TLS (default: --key)")
	c.Flags().BoolVar(&f.plain, "insecure-plaintext", false, "connect without TLS (loopback and tests only)")
	c.Flags().DurationVar(&f.timeout, "timeout", 60*time.Second, "give up after this long")
}

type ledgerSession struct {
	id      orderer.Identity
	conn    *grpc.ClientConn
	client  ab.AtomicBroadcastClient
	closers []func() error
	addr    string
}

func (s *ledgerSession) close() {
	if s.conn != nil {
		s.conn.Close()
	}
	for _, c := range s.closers {
		c()
	}
}

func (s *ledgerSession) connErr(cmd *cobra.Command, err error) error {
	return fmt.Errorf("%s: node %s: %w", cmd.CommandPath(), s.addr, err)
}

func readCert(path string) (*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := hsm.ParseCertificatesPEM(raw)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no certificate in %s", path)
	}
	return certs[0], nil
}

// open checks the flags (usage errors), opens the key and dials the node.
func (f *ledgerFlags) open(cmd *cobra.Command, e *env) (*ledgerSession, error) {
	p := cmd.CommandPath()
	if err := f.key.check(cmd); err != nil {
		return nil, err
	}
	switch {
	case f.certFile == "" || f.mspID == "":
		return nil, usagef("%s: --cert and --msp-id are required with --key", p)
	case f.channel == "":
		return nil, usagef("%s: --channel is required", p)
	case f.tlsCA == "" && !f.plain:
		return nil, usagef("%s: give --tls-ca (the node's TLS CA) or --insecure-plaintext", p)
	}
	if _, _, err := splitPort(f.addr); err != nil {
		return nil, usagef("%s: --orderer %q: %v", p, f.addr, err)
	}
	cert, err := readCert(f.certFile)
	if err != nil {
		return nil, usagef("%s: --cert: %v", p, err)
	}
	s := &ledgerSession{addr: f.addr}
	signer, err := hsm.OpenKey(f.key.key, f.key.options(e))
	if err != nil {
		return nil, hsmError(cmd, err)
	}
	s.closers = append(s.closers, signer.Close)
	s.id = orderer.Identity{MSPID: f.mspID, Cert: cert, Signer: signer}
	if _, err := s.id.Sign([]byte("memberd ledger key check")); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: key %s cannot sign for certificate %s: %w", p, f.key.key, f.certFile, err)
	}
	creds := insecure.NewCredentials()
	if !f.plain {
		raw, err := os.ReadFile(f.tlsCA)
		if err != nil {
			s.close()
			return nil, usagef("%s: --tls-ca: %v", p, err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(raw) {
			s.close()
			return nil, usagef("%s: --tls-ca %s holds no PEM certificate", p, f.tlsCA)
		}
		// The client certificate, sent only if the node asks for one
		// (ledger.mutual_tls): the identity (--cert, --key) unless
		// --tls-cert / --tls-key name another.
		c := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: signer, Leaf: cert}
		if f.tlsCert != "" {
			tcert, err := readCert(f.tlsCert)
			if err != nil {
				s.close()
				return nil, usagef("%s: --tls-cert: %v", p, err)
			}
			c.Certificate, c.Leaf = [][]byte{tcert.Raw}, tcert
		}
		if f.tlsKey != "" {
			k, err := hsm.OpenKey(f.tlsKey, f.key.options(e))
			if err != nil {
				s.close()
				return nil, hsmError(cmd, err)
			}
			s.closers = append(s.closers, k.Close)
			c.PrivateKey = k
		}
		creds = credentials.NewTLS(orderer.ClientTLS(&c, roots))
	}
	if s.conn, err = grpc.NewClient(f.addr, append(orderer.ClientOptions(), grpc.WithTransportCredentials(creds))...); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	s.client = ab.NewAtomicBroadcastClient(s.conn)
	return s, nil
}

func splitPort(hostport string) (string, uint32, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("bad port %q", port)
	}
	return host, uint32(n), nil
}

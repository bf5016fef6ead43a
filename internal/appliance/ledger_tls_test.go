package appliance

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"

	"github.com/memberd/memberd/internal/testpki"
)

// TestLedgerTLSFailuresCounted: failed handshakes on a ledger listener are
// counted by reason and the connection is not served: garbage bytes, a
// client that hangs up, no client certificate, a refused certificate, and a
// client that says nothing until the deadline.
func TestLedgerTLSFailuresCounted(t *testing.T) {
	srvCert := testpki.SelfSigned(t, "ledger").TLS()
	cfg := &tls.Config{Certificates: []tls.Certificate{srvCert}, MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error {
			return x509.UnknownAuthorityError{}
		}}
	vec := newLedgerTLSFailures(prometheus.NewRegistry())
	creds := countTLSFailures(credentials.NewTLS(cfg), "lan", vec, slog.New(slog.NewTextHandler(io.Discard, nil)))
	client := func(cert *tls.Certificate) func(net.Conn) {
		return func(c net.Conn) {
			cc := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
			if cert != nil {
				cc.Certificates = []tls.Certificate{*cert}
			}
			tc := tls.Client(c, cc)
			tc.Handshake()
			tc.Read(make([]byte, 1)) // TLS 1.3: the server's verdict on the client's certificate
			tc.Close()
		}
	}
	stranger := testpki.SelfSigned(t, "stranger").TLS()
	cases := []struct {
		reason string
		client func(net.Conn)
	}{
		{ledgerTLSError, func(c net.Conn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); io.Copy(io.Discard, c) }},
		{ledgerTLSClosed, func(c net.Conn) { c.Close() }},
		{ledgerTLSNoCertificate, client(nil)},
		{ledgerTLSCertificate, client(&stranger)},
		{ledgerTLSTimeout, func(c net.Conn) { io.Copy(io.Discard, c) }},
	}
	for _, c := range cases {
		srv, cl := net.Pipe()
		srv.SetDeadline(time.Now().Add(2 * time.Second)) // as grpc.ConnectionTimeout does
		go func() { c.client(cl); cl.Close() }()
		_, _, err := creds.ServerHandshake(srv)
		srv.Close()
		if err == nil {
			t.Errorf("%s: handshake succeeded", c.reason)
			continue
		}
		if got := metricValue(vec.WithLabelValues("lan", c.reason)); got != 1 {
			t.Errorf("%s: counted %v times (err %v), want 1", c.reason, got, err)
		}
	}

	// A connection through the tunnel whose peer reset it has a nil
	// RemoteAddr (gonet): the failure is logged and counted, no panic.
	// New credentials, so the line is not held back by the rate limit of
	// the failure of the same reason above.
	creds2 := countTLSFailures(credentials.NewTLS(cfg), "lan", vec, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv, cl := net.Pipe()
	cl.Close()
	if _, _, err := creds2.ServerHandshake(nilAddrConn{srv}); err == nil {
		t.Fatal("handshake on a closed connection succeeded")
	}
	if got := metricValue(vec.WithLabelValues("lan", ledgerTLSClosed)); got != 2 {
		t.Errorf("closed, nil remote address: counted %v in all, want 2", got)
	}
}

// nilAddrConn is a connection whose addresses are gone, as a netstack
// connection's are once its peer reset it.
type nilAddrConn struct{ net.Conn }

func (nilAddrConn) RemoteAddr() net.Addr { return nil }

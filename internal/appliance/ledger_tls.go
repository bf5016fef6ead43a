package appliance

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"
)

// ledgerHandshakeTimeout bounds a TLS handshake on the ledger's gRPC
// listeners (gRPC's default is 120 s: a connection that never says
// anything would hold its socket that long).
const ledgerHandshakeTimeout = 10 * time.Second

// Reasons of memberd_ledger_tls_handshake_failures_total.
const (
	ledgerTLSTimeout       = "timeout"        // nothing, or not all of a handshake, within ledgerHandshakeTimeout
	ledgerTLSNoCertificate = "no_certificate" // a mutual-TLS listener got no client certificate
	ledgerTLSCertificate   = "certificate"    // the client certificate is refused (unknown CA, expired, not a member)
	ledgerTLSClosed        = "closed"         // the client closed the connection during the handshake
	ledgerTLSError         = "tls_error"      // not TLS 1.3, or not TLS at all (garbage bytes)
)

var ledgerTLSReasons = []string{ledgerTLSTimeout, ledgerTLSNoCertificate, ledgerTLSCertificate, ledgerTLSClosed, ledgerTLSError}

// countedCreds counts and logs (one line per reason and 10 s) the failed
// TLS handshakes of a ledger gRPC listener; gRPC closes those connections.
type countedCreds struct {
	credentials.TransportCredentials
	listener string
	vec      *prometheus.CounterVec
	log      *slog.Logger

	mu   sync.Mutex
	last map[string]time.Time // reason -> when it was last logged
}

func newLedgerTLSFailures(reg prometheus.Registerer) *prometheus.CounterVec {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "memberd_ledger_tls_handshake_failures_total",
		Help: "TLS handshakes refused or failed on the ledger's gRPC listeners (lan, overlay), by reason; the connection is closed."},
		[]string{"listener", "reason"})
	for _, l := range []string{"lan", "overlay"} {
		for _, r := range ledgerTLSReasons {
			vec.WithLabelValues(l, r)
		}
	}
	if reg != nil {
		reg.MustRegister(vec)
	}
	return vec
}

func countTLSFailures(c credentials.TransportCredentials, listener string, vec *prometheus.CounterVec, log *slog.Logger) credentials.TransportCredentials {
	return &countedCreds{TransportCredentials: c, listener: listener, vec: vec, log: log, last: map[string]time.Time{}}
}

func (c *countedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		reason := ledgerTLSReason(err)
		c.vec.WithLabelValues(c.listener, reason).Inc()
		now := time.Now()
		c.mu.Lock()
		logIt := now.Sub(c.last[reason]) >= 10*time.Second
		if logIt {
			c.last[reason] = now
		}
		c.mu.Unlock()
		if logIt {
			c.log.Warn("ledger TLS handshake failed; connection closed (one line per reason every 10 s; see memberd_ledger_tls_handshake_failures_total)",
				"listener", c.listener, "reason", reason, "remote", remoteString(raw), "err", err)
		}
	}
	return conn, info, err
}

// remoteString names raw's peer for a log line: "unknown" when its address
// is nil (a netstack connection's is, once the peer reset it: the ledger's
// gRPC server also serves connections through the tunnel).
func remoteString(raw net.Conn) string {
	if a := raw.RemoteAddr(); a != nil {
		return fmt.Sprint(a)
	}
	return "unknown"
}

func (c *countedCreds) Clone() credentials.TransportCredentials {
	return &countedCreds{TransportCredentials: c.TransportCredentials.Clone(), listener: c.listener, vec: c.vec, log: c.log, last: map[string]time.Time{}}
}

func ledgerTLSReason(err error) string {
	var ne net.Error
	var inv x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	msg := err.Error()
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return ledgerTLSTimeout
	case strings.Contains(msg, "didn't provide a certificate") || strings.Contains(msg, "no certificate presented"):
		return ledgerTLSNoCertificate
	case errors.As(err, &inv) || errors.As(err, &ua) || strings.Contains(msg, "certificate"):
		return ledgerTLSCertificate
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || strings.Contains(msg, "connection reset"):
		return ledgerTLSClosed
	}
	return ledgerTLSError
}

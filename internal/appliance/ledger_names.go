package appliance

// The ledger's TLS certificate against the addresses it serves.

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/memberd/memberd/node/channelconfig"
)

// errServedName: the ledger's TLS certificate lacks a SAN for an address
// clients dial.
var errServedName = errors.New("TLS certificate does not name an address the ledger serves")

// servedAddr is an address the ledger serves with its TLS certificate and
// the memberd.yaml key that sets it.
type servedAddr struct{ key, addr string }

// served lists the addresses of l served with the node's TLS certificate:
// ledger.listen, and ledger.admin.listen unless it is plain HTTP.
func (l LedgerConfig) served() []servedAddr {
	out := []servedAddr{{"ledger.listen", l.Listen}}
	if l.Admin != nil && !l.Admin.InsecurePlainHTTP {
		out = append(out, servedAddr{"ledger.admin.listen", l.Admin.Listen})
	}
	return out
}

// checkServedNames checks that cert (the ledger's TLS certificate) has a
// SAN for every address clients dial: the host of each served address
// (unless it is a wildcard address) and each client-facing orderer
// endpoint of org mspID in the channel config ch (from the policy's
// ledger_endpoints). Fabric peers and osnadmin verify the host name and
// refuse a certificate that names the host only in its common name.
func checkServedNames(cert *x509.Certificate, served []servedAddr, ch *channelconfig.Channel, mspID string) error {
	type want struct{ host, what string }
	var wants []want
	for _, s := range served {
		if h, _, err := net.SplitHostPort(s.addr); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				wants = append(wants, want{h, "key " + s.key + " " + s.addr})
			}
		}
	}
	for _, o := range ch.Config.OrdererOrgs {
		if o.MSPID != mspID {
			continue
		}
		for _, ep := range o.OrdererEndpoints {
			if h, _, err := net.SplitHostPort(ep); err == nil {
				wants = append(wants, want{h, fmt.Sprintf("orderer endpoint %s of %s in the channel config (policy members[].ledger_endpoints)", ep, mspID)})
			}
		}
	}
	for _, w := range wants {
		if err := cert.VerifyHostname(w.host); err != nil {
			flag := "--dns " + w.host
			if net.ParseIP(w.host) != nil {
				flag = "--ip " + w.host
			}
			return fmt.Errorf("%w: certificate %q (serial %s) has no SAN for %s, the %s (SANs: DNS %q, IP %q); Fabric peers and osnadmin verify the host name: issue a new certificate with memberd hsm csr ... %s --ou %s and memberd ca sign",
				errServedName, cert.Subject, cert.SerialNumber, w.host, w.what, cert.DNSNames, cert.IPAddresses, flag, channelconfig.OrdererOU)
		}
	}
	return nil
}

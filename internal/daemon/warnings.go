package daemon

import (
	"crypto/x509"
	"fmt"
	"strings"
	"time"
)

// Warnings for /status: what an operator should fix, each naming the thing
// at fault and what to do.

// certExpiryWarning is how long before a certificate's not_after /status
// starts warning.
const certExpiryWarning = 30 * 24 * time.Hour

// UDPBufferWarnings names each UDP buffer limit under procSys (normally
// /proc/sys) below what QUIC needs.
func UDPBufferWarnings(procSys string) []string {
	var out []string
	for _, low := range smallUDPBuffers(procSys) {
		out = append(out, fmt.Sprintf("UDP buffer limit %s is %d bytes, below the %d QUIC needs (the QUIC path will be slow under load): %s",
			low.name, low.value, quicUDPBuffer, low.fix()))
	}
	return out
}

// CertificateWarning warns when c (what names it, e.g. "identity
// certificate /etc/memberd/identity/cert.pem") has expired or expires
// within certExpiryWarning of now; renew says how to replace it. "" = fine.
func CertificateWarning(what string, c *x509.Certificate, now time.Time, renew string) string {
	if c == nil {
		return ""
	}
	left := c.NotAfter.Sub(now)
	switch {
	case left <= 0:
		return fmt.Sprintf("%s (serial %s) EXPIRED on %s: peers and relays refuse it; %s",
			what, c.SerialNumber, c.NotAfter.UTC().Format(time.RFC3339), renew)
	case left < certExpiryWarning:
		return fmt.Sprintf("%s (serial %s) expires in %s, on %s: %s",
			what, c.SerialNumber, HumanDuration(left), c.NotAfter.UTC().Format(time.RFC3339), renew)
	}
	return ""
}

// HumanDuration renders d for people: "3d4h", "5h2m", "42s".
func HumanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d >= 24*time.Hour:
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return strings.TrimSuffix(d.Truncate(time.Minute).String(), "0s")
	case d >= time.Minute:
		return d.Truncate(time.Second).String()
	case d >= time.Second:
		return d.Truncate(100 * time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

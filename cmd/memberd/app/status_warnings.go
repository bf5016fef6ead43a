package app

import (
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/memberd/memberd/relay"
)

// The "warnings" of /status: what an operator should fix, each naming the
// thing at fault and what to do. 'memberd status' prints them under its
// table; monitoring can read them from 'memberd status --json'.

// certExpiryWarning is how long before a certificate's not_after /status
// starts warning.
const certExpiryWarning = 30 * 24 * time.Hour

// udpBufferWarnings names each UDP buffer limit under procSys (normally
// /proc/sys) below what QUIC needs.
func udpBufferWarnings(procSys string) []string {
	var out []string
	for _, low := range smallUDPBuffers(procSys) {
		out = append(out, fmt.Sprintf("UDP buffer limit %s is %d bytes, below the %d QUIC needs (the QUIC path will be slow under load): %s",
			low.name, low.value, quicUDPBuffer, low.fix()))
	}
	return out
}

// certificateWarning warns when c (what names it, e.g. "identity
// certificate /etc/memberd/identity/cert.pem") has expired or expires
// within certExpiryWarning of now; renew says how to replace it. "" = fine.
func certificateWarning(what string, c *x509.Certificate, now time.Time, renew string) string {
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
			what, c.SerialNumber, humanDuration(left), c.NotAfter.UTC().Format(time.RFC3339), renew)
	}
	return ""
}

// renewIdentity is how an appliance's identity certificate is replaced,
// without a restart.
const renewIdentity = "make a CSR with the HSM key ('memberd hsm csr'), have the member CA sign it, and drop the certificate into the identity folder"

// relayWarnings warns when no relay is connected, and names each relay
// that is not up with its last error.
func relayWarnings(relays []relay.RelayStatus) []string {
	var out, down []string
	for _, r := range relays {
		if r.State == "up" {
			continue
		}
		d := fmt.Sprintf("relay %s (%s) is %s", r.ID, r.Addr, r.State)
		if r.LastError != "" {
			d += ": " + r.LastError
		}
		down = append(down, d)
	}
	if len(relays) > 0 && len(down) == len(relays) {
		out = append(out, "no relay connected: the tunnel reaches no member; check that outbound UDP/443 or TCP/443 (or the HTTP proxy, key relay.proxy) reaches the relays")
	}
	return append(out, down...)
}

// ledgerWarnings reads the ledger part of /status (applianceStatus's
// ledger.status()): a ledger that is not active, or without a raft leader.
func ledgerWarnings(st any) []string {
	m, ok := st.(map[string]any)
	if !ok { // not configured
		return nil
	}
	var out []string
	if s, _ := m["state"].(string); s != "active" {
		out = append(out, "ledger is not active: "+s)
	} else if l, _ := m["leader"].(string); l == "" {
		out = append(out, "ledger: no raft leader known (an election is under way, or the consenters cannot reach each other through the tunnel)")
	}
	return out
}

// humanDuration renders d for people: "3d4h", "5h2m", "42s".
func humanDuration(d time.Duration) string {
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

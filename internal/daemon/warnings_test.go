package daemon

import (
	"crypto/x509"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var statusNow = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func TestWarnings(t *testing.T) {
	t.Run("udp buffers", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "net/core"), 0o755); err != nil {
			t.Fatal(err)
		}
		if w := UDPBufferWarnings(dir); len(w) != 0 {
			t.Fatalf("unreadable limits: %q", w)
		}
		for name, v := range map[string]string{"rmem_max": "212992\n", "wmem_max": "8388608\n"} {
			if err := os.WriteFile(filepath.Join(dir, "net/core", name), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		w := UDPBufferWarnings(dir)
		if len(w) != 1 || !strings.Contains(w[0], "net.core.rmem_max is 212992 bytes, below the 7500000") ||
			!strings.Contains(w[0], "sysctl -w net.core.rmem_max=7500000") {
			t.Fatalf("warnings %q, want one naming net.core.rmem_max and the fix", w)
		}
	})
	t.Run("certificate", func(t *testing.T) {
		cert := func(left time.Duration) *x509.Certificate {
			return &x509.Certificate{SerialNumber: big.NewInt(99), NotAfter: statusNow.Add(left)}
		}
		for _, tc := range []struct {
			name string
			c    *x509.Certificate
			want string
		}{
			{"none", nil, ""},
			{"a year", cert(365 * 24 * time.Hour), ""},
			{"31 days", cert(31 * 24 * time.Hour), ""},
			{"29 days", cert(29*24*time.Hour + 3*time.Hour), "identity certificate c.pem (serial 99) expires in 29d3h, on 2027-01-05T15:00:00Z: renew"},
			{"an hour", cert(time.Hour), "expires in 1h0m"},
			{"expired", cert(-time.Minute), "identity certificate c.pem (serial 99) EXPIRED on 2026-12-07T11:59:00Z: peers and relays refuse it; renew"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got := CertificateWarning("identity certificate c.pem", tc.c, statusNow, "renew")
				if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
			})
		}
	})
}

package relayd

import (
	"fmt"
	"strings"
	"testing"

	"github.com/memberd/memberd/relay"
)

const sampleRelayConfig = `id: relay-1
listen: ":443"
certificate: relay.crt
key: "pkcs11:token=relay;object=tls?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/memberd/hsm.pin"
limits: {queue_len: 100}
policy:
  members:
    bank-a: {ca: [a.pem]}
    bank-b: {ca: [b.pem]}
  allow: [[bank-a, bank-b]]
  relays:
    - {id: relay-1, addr: "relay1.example.net:443", pin: "sha256/AAAA"}
`

func TestRelayConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(strings.Replace(sampleRelayConfig, "listen: \":443\"\n", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":443" || c.Admin != "127.0.0.1:9464" {
		t.Fatalf("defaults: listen %q admin %q", c.Listen, c.Admin)
	}
	if _, err := ParseConfig([]byte(sampleRelayConfig + "admin_pprof: true\n")); err != nil {
		t.Fatalf("pprof on the default loopback admin address: %v", err)
	}
	if _, err := ParseConfig([]byte(sampleRelayConfig + "admin: 10.0.0.5:9464\nadmin_pprof: true\n")); err == nil ||
		!strings.Contains(err.Error(), "key admin_pprof") {
		t.Fatalf("pprof on a LAN admin address: %v, want an error naming admin_pprof", err)
	}
	if _, err := ParseConfig(nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty config: %v", err)
	}
}

// FuzzRelayConfig: the strict YAML config parser never panics, and what it
// accepts is valid.
func FuzzRelayConfig(f *testing.F) {
	f.Add([]byte(sampleRelayConfig))
	f.Add([]byte("id: x\nbogus: 1\n"))
	f.Add([]byte("policy: {members: {a: {ca: []}}}"))
	f.Add([]byte("{{{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		if c.ID == "" || c.Listen == "" || c.Admin == "" || c.Key == "" || len(c.Policy.Members) == 0 {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
		if !strings.HasPrefix(c.Key, "pkcs11:") && !c.InsecureDevKey {
			t.Fatalf("accepted a file key without insecure_dev_key")
		}
	})
}

func TestRelayConfigHandshakeLimits(t *testing.T) {
	with := func(limits string) string {
		return strings.Replace(sampleRelayConfig, "limits: {queue_len: 100}", "limits: {"+limits+"}", 1)
	}
	for _, tc := range []struct {
		name, limits, wantErr string
	}{
		{"defaults", "", ""},
		{"all set", "handshake_timeout: 2s, max_handshakes: 64, max_handshakes_per_source: 8", ""},
		{"per source equal to total", "max_handshakes: 16, max_handshakes_per_source: 16", ""},
		{"timeout too short", "handshake_timeout: 10ms", "key limits.handshake_timeout"},
		{"timeout too long", "handshake_timeout: 2h", "key limits.handshake_timeout"},
		{"timeout not a duration", "handshake_timeout: soon", `limits.handshake_timeout: line 5: want a duration like 500ms, 1s or 2m, got "soon"`},
		{"negative total", "max_handshakes: -1", "key limits.max_handshakes"},
		{"negative per source", "max_handshakes_per_source: -1", "key limits.max_handshakes_per_source"},
		{"per source above total", "max_handshakes: 8", "key limits.max_handshakes_per_source: 16 is above limits.max_handshakes 8"},
		{"unknown key", "max_handshake: 8", "max_handshake"},
		{"idle timeout", "idle_timeout: 45s", ""},
		{"idle timeout too short", "idle_timeout: 100ms", "key limits.idle_timeout: 100ms must be 1s..1h0m0s"},
		{"idle timeout too long", "idle_timeout: 2h", "key limits.idle_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(with(tc.limits)))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.limits != "" && (c.Limits.HandshakeTimeout == 0 && c.Limits.MaxHandshakes == 0 && c.Limits.IdleTimeout == 0) {
					t.Fatalf("limits not read: %+v", c.Limits)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// limits.rate_burst_bytes below one full-size packet with its frame header
// (relay.MinRateBurstBytes) would drop every full-size packet for ever: it
// is refused, naming the key and the minimum (found by review of f2d7279,
// where 16 KiB packets made such values of the 4 KiB days wrong).
func TestRelayConfigBurstFloor(t *testing.T) {
	with := func(limits string) string {
		return strings.Replace(sampleRelayConfig, "limits: {queue_len: 100}", "limits: {"+limits+"}", 1)
	}
	floor := fmt.Sprint(relay.MinRateBurstBytes)
	for _, tc := range []struct {
		name, limits, wantErr string
	}{
		{"default", "", ""},
		{"1 MiB", "rate_burst_bytes: 1048576", ""},
		{"at the floor", "rate_burst_bytes: " + floor, ""},
		{"4 KiB-era value", "rate_burst_bytes: 8192", "key limits.rate_burst_bytes: 8192 is below " + floor},
		{"one below", fmt.Sprintf("rate_burst_bytes: %d", relay.MinRateBurstBytes-1), "key limits.rate_burst_bytes"},
		{"negative", "rate_burst_bytes: -1", "rate_burst_bytes must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(with(tc.limits)))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

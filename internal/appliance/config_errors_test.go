package appliance

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/memberd/memberd/internal/confyaml"
)

// TestConfigErrorsNameKeyPaths: typos in memberd.yaml and relay.yaml are
// reported with the key path, the line and what the value should look
// like, never Go type names.
func TestConfigErrorsNameKeyPaths(t *testing.T) {
	run := validRunConfig + `relay:
  quic_timeout: 1s
ledger:
  listen: 127.0.0.1:7050
  snapshot_bytes: 4MiB
tunnel:
  forwards:
    - {listen: "127.0.0.1:9000", member: bank-b, port: 80}
`
	// validRunConfig starts with an empty line: member is on line 2, and
	// the lines above follow its 4 lines.
	for _, tc := range []struct{ name, from, to, want string }{
		{"unknown nested key", "quic_timeout: 1s", "quic_timeot: 1s",
			"relay.quic_timeot: line 6: unknown key; did you mean quic_timeout? (keys of relay: no_env_proxy, proxy, quic_timeout, reprobe_interval)"},
		{"unknown top key", "\nmember: bank-a", "\nmembre: bank-a", "membre: line 2: unknown key; did you mean member?"},
		{"bad duration", "quic_timeout: 1s", "quic_timeout: fast", `relay.quic_timeout: line 6: want a duration like 500ms, 1s or 2m, got "fast"`},
		{"bad size", "snapshot_bytes: 4MiB", "snapshot_bytes: 4 megs", `ledger.snapshot_bytes: line 9: want a size like 4MiB, 512KiB or 4194304 (bytes), got "4 megs"`},
		{"port out of range", "port: 80", "port: 70000", `tunnel.forwards[0].port: line 12: want a whole number 0..65535 (a port), got "70000"`},
		{"list for text", "listen: 127.0.0.1:7050", "listen: [a, b]", "ledger.listen: line 8: want a single value (text), got a list"},
		{"text for section", "relay:\n  quic_timeout: 1s", "relay: fast", `relay: line 5: want a mapping (indented key: value lines), got "fast"`},
		{"bool typo", "snapshot_bytes: 4MiB", "mutual_tls: yes please", `ledger.mutual_tls: line 9: want true or false, got "yes please"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(run, tc.from) {
				t.Fatalf("%q not in the config", tc.from)
			}
			_, err := ParseConfig([]byte(strings.Replace(run, tc.from, tc.to, 1)), "/x")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n  %v\nwant it to contain:\n  %s", err, tc.want)
			}
			for _, goType := range []string{"!!str", "time.Duration", "uint16", "app.run", "appliance.", "not found in type"} {
				if strings.Contains(err.Error(), goType) {
					t.Errorf("the error names a Go/YAML type (%s): %v", goType, err)
				}
			}
		})
	}
	c, err := ParseConfig([]byte(run), "/x")
	if err != nil {
		t.Fatal(err)
	}
	if c.Ledger.SnapshotBytes != 4<<20 {
		t.Errorf("snapshot_bytes: 4MiB read as %d", c.Ledger.SnapshotBytes)
	}
	if _, err := ParseConfig([]byte("member: [\n"), "/x"); err == nil || !strings.Contains(err.Error(), "line ") {
		t.Errorf("a YAML syntax error does not name its line: %v", err)
	}
	if err := confyaml.Decode([]byte(""), &Config{}); !errors.Is(err, io.EOF) {
		t.Errorf("empty file: %v, want io.EOF", err)
	}
}

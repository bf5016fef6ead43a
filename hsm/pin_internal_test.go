package hsm

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("1234\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hsm-pin"), []byte("5678"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	for _, tc := range []struct {
		name string
		u    URI
		opts *Options
		want string
		err  error
	}{
		{"file:", URI{PINSource: "file:" + pinFile}, nil, "1234", nil},
		{"file:///", URI{PINSource: "file://" + pinFile}, nil, "1234", nil},
		{"bare path", URI{PINSource: pinFile}, nil, "1234", nil},
		{"systemd credential", URI{PINSource: "cred:hsm-pin"}, nil, "5678", nil},
		{"credential with slash", URI{PINSource: "cred:../pin"}, nil, "", ErrPINSource},
		{"missing file", URI{PINSource: "file:" + filepath.Join(dir, "nope")}, nil, "", ErrPINSource},
		{"empty file", URI{PINSource: "file:" + empty}, nil, "", ErrPINSource},
		{"relative", URI{PINSource: "pin.txt"}, nil, "", ErrPINSource},
		{"no PIN", URI{}, nil, "", nil},
		{"pin-value refused", URI{PINValue: "1"}, nil, "", ErrPINValueRefused},
		{"pin-value allowed", URI{PINValue: "1"}, &Options{AllowPINValue: true}, "1", nil},
		{"both", URI{PINValue: "1", PINSource: "file:" + pinFile}, &Options{AllowPINValue: true}, "", ErrBadURI},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readPIN(&tc.u, tc.opts)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %q, %v; want %v", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if _, err := readPIN(&URI{PINSource: "cred:hsm-pin"}, nil); !errors.Is(err, ErrPINSource) {
		t.Fatalf("credential without CREDENTIALS_DIRECTORY: %v", err)
	}
}

// A group-readable PIN file is warned about; a systemd credential (0440 in
// the service's private credentials folder, as systemd makes it) is not.
func TestReadPINModeWarning(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"pin", "hsm-pin"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("1234"), 0o440); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	for _, tc := range []struct {
		src  string
		warn bool
	}{{"file:" + filepath.Join(dir, "pin"), true}, {"cred:hsm-pin", false}} {
		var logs bytes.Buffer
		opts := &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
		if _, err := readPIN(&URI{PINSource: tc.src}, opts); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(logs.String(), "readable by group or others"); got != tc.warn {
			t.Errorf("pin-source=%s: warned %v, want %v (log: %q)", tc.src, got, tc.warn, logs.String())
		}
	}
}

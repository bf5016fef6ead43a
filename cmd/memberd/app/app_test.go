package app

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

// run executes memberd in-process and returns exit code, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "version")
	if code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.HasPrefix(out, "memberd ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("version output %q lacks name or Go version", out)
	}
	code, out, _ = run(t, "version", "--json")
	if code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	var v struct {
		Version   string `json:"version"`
		Commit    string `json:"commit"`
		GoVersion string `json:"go_version"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("version --json: %v (%q)", err, out)
	}
	if v.Version == "" || v.Commit == "" || v.GoVersion != runtime.Version() {
		t.Fatalf("version --json incomplete: %+v", v)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown subcommand "frobnicate"`},
		{"unknown flag", []string{"version", "--bogus"}, "unknown flag: --bogus"},
		{"group without subcommand", []string{"hsm"}, "a subcommand is required"},
		{"unknown nested subcommand", []string{"policy", "frob"}, `unknown subcommand "frob"`},
		{"extra argument", []string{"version", "extra"}, "unknown command"},
		{"relay log format", []string{"relay", "--log-format", "xml"}, `--log-format: "xml" is not json, text or auto`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != ExitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, ExitUsage, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr %q does not mention %q", stderr, tc.want)
			}
		})
	}
}

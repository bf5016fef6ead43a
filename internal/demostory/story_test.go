package demostory_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testenv"
)

// TestDemoCI runs 'memberd demo --ci' as a user would: the real binary,
// built here, telling the whole story with real relay and member processes.
// It passes only if the command exits 0 and its summary shows every step
// verified.
func TestDemoCI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole consortium as processes (a minute or more): not with -short")
	}
	testenv.SoftHSMModule(t)
	testenv.Command(t, "pkcs11-tool", "opensc")
	dir := t.TempDir()
	bin := filepath.Join(dir, "memberd")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "github.com/memberd/memberd/cmd/memberd")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	demo := filepath.Join(dir, "demo")
	cmd := exec.CommandContext(ctx, bin, "demo", "--ci", "--dir", demo)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("memberd demo --ci:\n%s", out.String())
	if err != nil {
		for _, name := range []string{"relay-1", "relay-2", "member-a", "member-b", "member-c"} {
			if raw, rerr := os.ReadFile(filepath.Join(demo, "logs", name+".log")); rerr == nil {
				t.Logf("last of %s.log:\n%s", name, lastLines(string(raw), 15))
			}
		}
		t.Fatalf("memberd demo --ci: %v", err)
	}
	text := out.String()
	for _, step := range []string{"1. consortium up", "2. transactions ordered", "3. governance change", "4. relay killed under traffic", "5. identity key rotated"} {
		line := lineWith(text, "  "+step)
		if f := strings.Fields(strings.TrimPrefix(line, "  "+step)); len(f) == 0 || f[0] != "ok" {
			t.Errorf("summary row %q: %q, want ok", step, line)
		}
	}
	if !strings.Contains(text, "every step verified") {
		t.Errorf("output does not end with 'every step verified'")
	}
	// Logs went to files, one per process.
	for _, name := range []string{"relay-1", "relay-2", "member-a", "member-b", "member-c", "commands"} {
		if st, err := os.Stat(filepath.Join(demo, "logs", name+".log")); err != nil || st.Size() == 0 {
			t.Errorf("log %s.log: missing or empty (%v)", name, err)
		}
	}
}

func lineWith(text, prefix string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

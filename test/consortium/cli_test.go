package consortium_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/memberd/memberd/internal/testenv"
)

// exitRuntime is the exit status of a memberd command that ran and
// refused (cmd/memberd/app.ExitRuntime); 0 is success.
const exitRuntime = 1

// The memberd binary these tests run, as operators do: built from this
// tree once per package run (or MEMBERD_BIN), removed by TestMain.
var cliBin struct {
	once sync.Once
	dir  string // temporary build directory; "" with MEMBERD_BIN
	path string
	err  error
}

// memberdBin returns the path of the memberd binary: MEMBERD_BIN if set,
// else one built from this tree on first use.
func memberdBin(t testing.TB) string {
	t.Helper()
	cliBin.once.Do(func() {
		if os.Getenv("MEMBERD_BIN") == "" {
			if cliBin.dir, cliBin.err = os.MkdirTemp("", "memberd-consortium-test-"); cliBin.err != nil {
				return
			}
		}
		cliBin.path, cliBin.err = testenv.FindMemberd("MEMBERD_BIN", cliBin.dir)
	})
	if cliBin.err != nil {
		t.Fatal(cliBin.err)
	}
	return cliBin.path
}

// removeBuiltBinary removes the binary memberdBin built, if any.
func removeBuiltBinary() {
	if cliBin.dir != "" {
		os.RemoveAll(cliBin.dir)
	}
}

// runMemberd runs the memberd command line with args and returns its exit
// status and its stdout and stderr. A binary that cannot be started fails
// the test.
func runMemberd(t testing.TB, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(memberdBin(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		t.Fatalf("memberd %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errb.String()
}

// memberd runs the memberd command line and fails the test unless it
// exits 0.
func memberd(t *testing.T, args ...string) {
	t.Helper()
	if code, _, errb := runMemberd(t, args...); code != 0 {
		t.Fatalf("memberd %s: exit %d: %s", strings.Join(args, " "), code, errb)
	}
}

package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// MemberdPackage is the import path of the memberd command.
const MemberdPackage = "github.com/memberd/memberd/cmd/memberd"

// FindMemberd returns the memberd binary a test runs as an operator
// would: the file the environment variable env names (MEMBERD_BIN, or
// MEMBERD_E2E_BIN for test/e2e; made absolute, it must exist), else memberd
// built from this tree into the existing folder dir.
func FindMemberd(env, dir string) (string, error) {
	if p := os.Getenv(env); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("%s=%s: %w (run make build, or unset %s to build memberd from this tree)", env, p, err, env)
		}
		return abs, nil
	}
	bin := filepath.Join(dir, "memberd")
	if out, err := exec.Command(goCommand(), "build", "-o", bin, MemberdPackage).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build memberd: %v\n%s", err, out)
	}
	return bin, nil
}

// Memberd is FindMemberd that fails t on an error.
func Memberd(t testing.TB, env, dir string) string {
	t.Helper()
	bin, err := FindMemberd(env, dir)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// goCommand is the go command of the toolchain running the test, else
// the one on PATH.
func goCommand() string {
	if root := runtime.GOROOT(); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

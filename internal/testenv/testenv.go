// Package testenv decides what a test does when something it needs from the
// machine (root, SoftHSM2, network namespaces, a proxy binary) is missing.
//
// On a developer machine such a test is skipped with a message naming the
// package to install. When the CI environment variable is set, it FAILS
// instead: CI installs every prerequisite (.ci/run), so a missing one is a
// broken CI setup that must not pass silently.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// InCI reports whether tests run under CI (the CI variable is set and not "false").
func InCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// Missing skips the test, or fails it under CI, explaining what is missing
// and how to get it.
func Missing(t testing.TB, what, howToGet string) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing: %s (%s); CI must provide it (.ci/run)", what, howToGet)
	}
	t.Skipf("prerequisite missing: %s (%s)", what, howToGet)
}

// SoftHSMModuleCandidates are the places Debian and other distributions put
// the SoftHSM2 PKCS#11 module.
var SoftHSMModuleCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// SoftHSMModule returns the path of the SoftHSM2 module and of softhsm2-util,
// or skips/fails the test when they are not installed.
func SoftHSMModule(t testing.TB) (module, util string) {
	t.Helper()
	if p := os.Getenv("MEMBERD_TEST_PKCS11_MODULE"); p != "" {
		module = p
	} else {
		for _, c := range SoftHSMModuleCandidates {
			if _, err := os.Stat(c); err == nil {
				module = c
				break
			}
		}
	}
	util, err := exec.LookPath("softhsm2-util")
	if module == "" || err != nil {
		Missing(t, "SoftHSM2 (module libsofthsm2.so and softhsm2-util)", "apt-get install softhsm2")
	}
	return module, util
}

// Command returns the path of an executable, or skips/fails the test.
func Command(t testing.TB, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name, "apt-get install "+debianPackage)
	}
	return p
}

// Root skips/fails the test unless it runs as root (needed for network
// namespaces and nftables).
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root privileges", "run the tests as root, as CI does")
	}
}

// FabricDirEnv names the environment variable that points at a stock
// Hyperledger Fabric 2.5.16 distribution: a folder with bin/ (peer, orderer,
// osnadmin, configtxlator, configtxgen, cryptogen) and config/ (core.yaml,
// orderer.yaml, configtx.yaml). .ci/run sets it from ../shared/fabric-2.5.16.
const FabricDirEnv = "MEMBERD_FABRIC_DIR"

// Fabric locates the stock Fabric binaries and sample config. It returns the
// folder named by MEMBERD_FABRIC_DIR, or ../shared/fabric-2.5.16 found from
// the repository root, and checks that bin/<name> exists for every name
// given; otherwise it skips the test, or fails it under CI.
func Fabric(t testing.TB, binaries ...string) (dir string) {
	t.Helper()
	dir = os.Getenv(FabricDirEnv)
	if dir == "" {
		dir = findShared("fabric-2.5.16")
	}
	if dir == "" {
		Missing(t, "stock Fabric 2.5.16 binaries", "set "+FabricDirEnv+" to a folder with bin/ and config/, e.g. ../shared/fabric-2.5.16")
		return ""
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(dir, "bin", b)); err != nil {
			Missing(t, "stock Fabric binary "+b, "expected at "+filepath.Join(dir, "bin", b)+"; set "+FabricDirEnv)
		}
	}
	return dir
}

// findShared walks up from the working directory to the repository root (the
// folder with go.mod) and returns ../shared/<name> beside it, if it exists.
func findShared(name string) string {
	wd, err := os.Getwd()
	if err != nil {
		return ""
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			p := filepath.Join(filepath.Dir(d), "shared", name)
			if _, err := os.Stat(p); err == nil {
				return p
			}
			return ""
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

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

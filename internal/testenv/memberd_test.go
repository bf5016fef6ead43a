package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindMemberdFromEnv: the variable's file is used, made absolute; a
// missing one is an error that names the variable.
func TestFindMemberdFromEnv(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("memberd-x", []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MEMBERD_TEST_BIN", "memberd-x")
	got, err := FindMemberd("MEMBERD_TEST_BIN", "/nonexistent")
	if want := filepath.Join(dir, "memberd-x"); err != nil || got != want {
		t.Fatalf("FindMemberd = %q, %v; want %q", got, err, want)
	}
	t.Setenv("MEMBERD_TEST_BIN", filepath.Join(dir, "missing"))
	if _, err := FindMemberd("MEMBERD_TEST_BIN", dir); err == nil || !strings.Contains(err.Error(), "MEMBERD_TEST_BIN=") {
		t.Fatalf("FindMemberd with a missing file = %v, want an error naming MEMBERD_TEST_BIN", err)
	}
}

package fsync

import (
	"errors"
	"io/fs"
	"path/filepath"
	"testing"
)

func TestDir(t *testing.T) {
	dir := t.TempDir()
	if err := Dir(dir); err != nil {
		t.Fatalf("Dir(%s) = %v, want nil", dir, err)
	}
	missing := filepath.Join(dir, "missing")
	if err := Dir(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Dir(%s) = %v, want an error wrapping fs.ErrNotExist", missing, err)
	}
}

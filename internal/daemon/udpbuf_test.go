package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSmallUDPBuffers(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, v string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := smallUDPBuffers(dir); len(got) != 0 {
		t.Fatalf("unreadable limits reported as small: %v", got)
	}
	write("net/core/rmem_max", "4194304\n")
	write("net/core/wmem_max", "7500000\n")
	got := smallUDPBuffers(dir)
	if len(got) != 1 || got[0].name != "net.core.rmem_max" || got[0].value != 4194304 {
		t.Fatalf("smallUDPBuffers = %+v, want only net.core.rmem_max=4194304", got)
	}
	write("net/core/rmem_max", "8388608\n")
	write("net/core/wmem_max", "junk")
	if got := smallUDPBuffers(dir); len(got) != 0 {
		t.Fatalf("large or unparsable limits reported as small: %v", got)
	}
}

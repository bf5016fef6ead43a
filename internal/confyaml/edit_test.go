package confyaml

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEditFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("ledger:\n  listen: 127.0.0.1:7050\nid: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := EditFile(p, func(m map[string]any) {
		m["ledger"].(map[string]any)["config_blocks"] = true
		delete(m, "id")
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if got := string(b); !strings.Contains(got, "config_blocks: true") || !strings.Contains(got, "listen: 127.0.0.1:7050") || strings.Contains(got, "id:") {
		t.Fatalf("edited file:\n%s", got)
	}
	if err := os.WriteFile(p, []byte("a: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := EditFile(p, func(map[string]any) {}); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("broken file: err %v, want one naming %s", err, p)
	}
}

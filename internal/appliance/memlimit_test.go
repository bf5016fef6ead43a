package appliance

import (
	"bytes"
	"log/slog"
	"runtime/debug"
	"strings"
	"testing"
)

func TestMemoryLimit(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	for _, tc := range []struct {
		name   string
		cfg    Config
		want   int64
		source string
	}{
		{"default without ledger", Config{}, 112 << 20, "default"},
		{"default follows snapshot_bytes", Config{Ledger: &LedgerConfig{SnapshotBytes: 16 << 20}}, 160 << 20, "default"},
		{"set", Config{MemoryLimit: 300 << 20}, 300 << 20, "memory_limit"},
		{"off", Config{MemoryLimit: -1}, -1, "memory_limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, source := tc.cfg.memoryLimit()
			if got != tc.want || source != tc.source {
				t.Fatalf("memoryLimit() = %d (%s), want %d (%s)", got, source, tc.want, tc.source)
			}
		})
	}
	for _, bad := range []int64{1, 63 << 20, -2} {
		if err := (&Config{MemoryLimit: bad}).validateMemoryLimit(); err == nil || !strings.Contains(err.Error(), "key memory_limit") {
			t.Errorf("memory_limit %d: err = %v, want one naming the key", bad, err)
		}
	}
}

// ApplyMemoryLimit really sets the runtime's limit, and GOMEMLIMIT wins.
func TestApplyMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	t.Setenv("GOMEMLIMIT", "")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ApplyMemoryLimit(log, &Config{MemoryLimit: 200 << 20})
	if got := debug.SetMemoryLimit(-1); got != 200<<20 {
		t.Fatalf("runtime limit = %d, want %d", got, 200<<20)
	}
	if !strings.Contains(logs.String(), "source=memory_limit") {
		t.Errorf("log does not say where the limit came from: %s", logs.String())
	}
	t.Setenv("GOMEMLIMIT", "150MiB")
	debug.SetMemoryLimit(150 << 20) // what the runtime did at start with that environment
	ApplyMemoryLimit(log, &Config{MemoryLimit: 200 << 20})
	if got := debug.SetMemoryLimit(-1); got != 150<<20 {
		t.Fatalf("with GOMEMLIMIT set the runtime limit = %d, want it left at %d", got, 150<<20)
	}
}

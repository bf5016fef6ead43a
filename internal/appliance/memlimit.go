package appliance

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/memberd/memberd/node/raftlog"
)

// Go's soft memory limit for `memberd run` (key memory_limit). An appliance's
// live heap is bounded by design (raft's in-memory log by ledger.snapshot_bytes,
// bounded queues everywhere); the soft limit makes the garbage collector return
// freed memory early enough that RSS stays near that bound, which a platform
// team sizes its host and MemoryMax= by. It is soft: a heap that genuinely
// needs more gets it (the runtime caps GC work at about half the CPU), it never
// fails an allocation.
const (
	memoryLimitBase     = 96 << 20 // heap of an appliance without the raft log: tunnel, relays, caches, gRPC
	memoryLimitPerSnap  = 4        // raft's in-memory log holds about 2 x snapshot_bytes, in flight up to 2 more
	minMemoryLimitBytes = 64 << 20
)

// defaultMemoryLimit is memory_limit when the key is left out:
// 96 MiB + 4 x ledger.snapshot_bytes (112 MiB with the 4 MiB default).
func defaultMemoryLimit(snapshotBytes uint64) int64 {
	if snapshotBytes == 0 {
		snapshotBytes = raftlog.DefaultSnapshotBytes
	}
	return memoryLimitBase + memoryLimitPerSnap*int64(snapshotBytes)
}

// memoryLimit is the limit `memberd run` sets: GOMEMLIMIT from the
// environment wins (the runtime has applied it already); then memory_limit;
// then the default. -1 means "none": memory_limit: -1 turns it off.
func (c *Config) memoryLimit() (limit int64, source string) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return debug.SetMemoryLimit(-1), "GOMEMLIMIT"
	}
	if c.MemoryLimit != 0 {
		return c.MemoryLimit, "memory_limit"
	}
	var snap uint64
	if c.Ledger != nil {
		snap = uint64(c.Ledger.SnapshotBytes)
	}
	return defaultMemoryLimit(snap), "default"
}

func (c *Config) validateMemoryLimit() error {
	if c.MemoryLimit != 0 && c.MemoryLimit != -1 && c.MemoryLimit < minMemoryLimitBytes {
		return fmt.Errorf("key memory_limit: %d bytes is below %d (64 MiB); leave it out for the default (96 MiB + 4 x ledger.snapshot_bytes) or set -1 for none", c.MemoryLimit, minMemoryLimitBytes)
	}
	return nil
}

// ApplyMemoryLimit sets Go's soft memory limit for this process and says so.
// Only `memberd run` calls it: the demo runs several appliances in one process.
func ApplyMemoryLimit(log *slog.Logger, c *Config) {
	limit, source := c.memoryLimit()
	if source == "GOMEMLIMIT" {
		log.Info("memory limit from GOMEMLIMIT", "limit_bytes", limit)
		return
	}
	if limit < 0 {
		log.Info("no soft memory limit (memory_limit: -1)")
		return
	}
	debug.SetMemoryLimit(limit)
	log.Info("soft memory limit set", "limit_bytes", limit, "source", source)
}

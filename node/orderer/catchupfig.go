package orderer

import (
	"time"
)

// catchUpFigures say where a catch-up's time went, for its log line:
// until the first block came (dialing, the peer's checks, a stalled peer
// given up), fetching, and storing (write and fsync of the batches).
type catchUpFigures struct {
	start, first time.Time
	from         uint64
	blocks       int
	bytes        int64
	storing      time.Duration
	retries      int
}

func (f *catchUpFigures) block(size int) {
	if f.blocks == 0 {
		f.first = time.Now()
	}
	f.blocks++
	f.bytes += int64(size)
}

// attrs are the log line's key-value pairs, the store now at height.
func (f *catchUpFigures) attrs(height uint64) []any {
	took := time.Since(f.start)
	rate := 0.0
	if s := took.Seconds(); s > 0 {
		rate = float64(f.bytes) / s / 1e6
	}
	return []any{"from", f.from, "height", height, "blocks", f.blocks, "bytes", f.bytes,
		"took_ms", took.Milliseconds(), "first_block_ms", f.first.Sub(f.start).Milliseconds(),
		"storing_ms", f.storing.Milliseconds(), "retries", f.retries, "mb_per_s", float64(int(rate*100)) / 100}
}

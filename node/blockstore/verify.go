package blockstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/memberd/memberd/node/block"
)

// More sentinel errors, of VerifyDir.
var (
	// ErrNoStore: the directory holds no block store (no blocks.dat).
	ErrNoStore = errors.New("no block store")
	// ErrTornTail: blocks.dat ends in a partial record that no index entry
	// vouches for, as a crash in the middle of an append leaves it; the
	// next Open cuts it.
	ErrTornTail = errors.New("block store has a torn tail")
)

// VerifyDir checks the block store in dir as Verify does, every block of
// it, without changing anything: it creates no file or directory, cuts no
// torn tail and rewrites no index (Open does all three), so that what it
// reports is still there to be examined or restored. It also checks the
// offset index (blocks.idx) against the records. It takes the directory's
// lock shared, so it fails with ErrLocked while a Store has it open.
//
// It returns the number of intact blocks and nil, or an error wrapping
// ErrNoStore (no blocks.dat in dir), ErrLocked, ErrCorrupt (damage, or an
// index entry that disagrees with an intact record), ErrTornTail, or ctx's
// error. progress is as for Verify.
func VerifyDir(ctx context.Context, dir string, cfg Config, progress func(done, total int64)) (uint64, error) {
	path := filepath.Join(dir, dataFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s does not exist; give the block store directory of a channel, DATA_DIR/CHANNEL/blocks, which holds %s and %s",
			ErrNoStore, path, dataFile, indexFile)
	}
	if err != nil {
		return 0, fmt.Errorf("block store: %w", err)
	}
	defer f.Close()
	// The lock file exists once a Store has opened dir; without it no
	// Store has the directory open.
	if lf, err := os.Open(filepath.Join(dir, lockFile)); err == nil {
		defer lf.Close()
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
			return 0, fmt.Errorf("%w: %s is locked by a memberd process (%v): stop it first", ErrLocked, dir, err)
		}
	}
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("block store: %w", err)
	}
	size := st.Size()
	hdr := make([]byte, fileHeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return 0, fmt.Errorf("%w: %s at offset 0: reading file header: %v", ErrCorrupt, path, err)
	}
	if err := checkFileHeader(hdr); err != nil {
		return 0, fmt.Errorf("%w: %s at offset 0: %v", ErrCorrupt, path, err)
	}
	done := func(int64) {}
	if progress != nil {
		done = func(n int64) { progress(min(n, size), size) }
	}
	res, err := scan(progressReader{r: f, ctx: ctx, done: done}, fileHeaderSize, 0, size, cfg.maxBlock(), block.VerifyHeaderChain)
	if err != nil {
		var c *errCorrupt
		if errors.As(err, &c) {
			return 0, c.report(path)
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return 0, err
		}
		return 0, fmt.Errorf("block store %s: verifying: %w", path, err)
	}
	indexed := readIndexFile(filepath.Join(dir, indexFile), size, cfg.maxBlock())
	agrees := compareIndex(path, res.locs, indexed)
	if res.tail < size {
		if agrees == nil {
			if c := vouched(res.locs, indexed); c != nil {
				return 0, c.report(path)
			}
		}
		return 0, fmt.Errorf("%w: %s at offset %d: the last %d bytes, after block %d, are not a whole record (a crash during an append leaves them): "+
			"the next start of memberd cuts them and fetches the block again from the other consenters",
			ErrTornTail, path, res.tail, size-res.tail, len(res.locs)-1)
	}
	if agrees != nil {
		return 0, agrees
	}
	done(size)
	return uint64(len(res.locs)), nil
}

// readIndexFile returns the consistent entries of the index at path,
// opened read-only; none when it is missing or unreadable (the index is a
// cache: Open then reads the whole chain).
func readIndexFile(path string, dataSize int64, maxLen uint32) []loc {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	locs, err := readIndexOf(f, dataSize, maxLen)
	if err != nil {
		return nil
	}
	return locs
}

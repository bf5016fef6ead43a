// Package blockstore keeps a channel's blocks in one append-only,
// checksummed, fsynced file and serves them by number.
//
// Durability contract: Append and AppendRaw return only after the block is
// written and fdatasync'ed; a caller may acknowledge a block (or the
// envelopes in it) as soon as Append returns nil. After a crash, Open keeps
// every block whose Append returned and at most drops the one being
// appended (a torn tail). Damage anywhere else is reported, never repaired.
//
// Layout: DIR/blocks.dat (format in format.go), DIR/blocks.idx (a cache of
// the record offsets, format in index.go) and DIR/LOCK (an exclusive flock
// so that two processes never append to the same store). Open reads the
// index and checks only the tail of blocks.dat (checksums, block numbers
// and the header hash chain of the last indexed blocks and of every block
// the index misses), so a start costs the same with a year of chain as with
// a day of it; without a usable index it scans the whole file once. It
// keeps the record offsets in memory: Get(n) is one pread, and checks the
// block's checksum. Verify checks the whole chain, on demand; VerifyDir
// does so read-only on a store no process has open (memberd ledger verify).
package blockstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/fsync"
	"github.com/memberd/memberd/node/block"
)

// Sentinel errors.
var (
	// ErrCorrupt: the block file is damaged somewhere other than a torn tail.
	ErrCorrupt = errors.New("block store corrupt")
	// ErrNotFound: no block with that number (yet).
	ErrNotFound = errors.New("block not found")
	// ErrNotNext: an appended block is not the next one (wrong number or
	// previous hash, or bad data hash).
	ErrNotNext = errors.New("block is not the next block of the store")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("block store closed")
	// ErrFailed: an earlier write or fsync failed; the store refuses appends
	// until it is reopened (after a failed fsync the page cache cannot be trusted).
	ErrFailed = errors.New("block store failed")
	// ErrLocked: another process (or Store) has the directory open.
	ErrLocked = errors.New("block store in use")
	// ErrTooLarge: a block exceeds Config.MaxBlockBytes.
	ErrTooLarge = errors.New("block too large")
)

const (
	dataFile = "blocks.dat"
	lockFile = "LOCK"
	// DefaultMaxBlockBytes is Config.MaxBlockBytes's default: above Fabric's
	// largest AbsoluteMaxBytes (99 MB) plus signatures and metadata.
	DefaultMaxBlockBytes = 128 << 20
)

// Config tunes a Store. The zero value is usable.
type Config struct {
	// Logger receives recovery and failure events. Nil discards them.
	Logger *slog.Logger
	// MaxBlockBytes is the largest marshalled block accepted and read back
	// (a record length above it is treated as damage). Default 128 MiB.
	MaxBlockBytes uint32

	// noIndex (benchmarks) opens as before the index: no blocks.idx read
	// or written, a full scan.
	noIndex bool
}

// Validate reports whether c is usable.
func (c Config) Validate() error { return nil }

func (c Config) maxBlock() uint32 {
	if c.MaxBlockBytes == 0 {
		return DefaultMaxBlockBytes
	}
	return c.MaxBlockBytes
}

// Recovery describes what Open did to the file.
type Recovery struct {
	// TruncatedAt is the offset the file was cut back to, and TruncatedBytes
	// how much was dropped; both 0 when the file ended cleanly.
	TruncatedAt, TruncatedBytes int64
}

// Store is an open block store. Its methods are safe for concurrent use;
// appends are serialised.
type Store struct {
	path  string
	cfg   Config
	log   *slog.Logger
	lock  *os.File
	f     *os.File
	fsync func(*os.File) error // fdatasync; replaced by tests to inject failures

	appendMu sync.Mutex // serialises appends (held across write+fsync)
	size     int64      // file size; owned by appendMu holders (and Open)
	failed   error      // sticky; guarded by appendMu
	// The index (index.go), written by appenders: guarded by appendMu.
	idx       *os.File // nil when it could not be opened
	idxSize   int64
	idxFailed bool // a write failed: no more writes until reopened

	mu       sync.RWMutex
	locs     []loc
	last     *common.BlockHeader
	notify   chan struct{} // closed and replaced on every new block and on Close
	closed   bool
	recovery Recovery
}

// Open opens (creating if needed) the block store in dir, recovering from a
// torn tail. See the package documentation for the guarantees.
func Open(dir string, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("block store directory %s: %w", dir, err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("block store lock: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("%w: %s is locked by another memberd process (%v): stop it or use another directory", ErrLocked, dir, err)
	}
	s := &Store{path: filepath.Join(dir, dataFile), cfg: cfg, log: log, lock: lf, fsync: fdatasync, notify: make(chan struct{})}
	if err := s.open(dir); err != nil {
		lf.Close()
		return nil, err
	}
	return s, nil
}

func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

func (s *Store) open(dir string) error {
	if _, err := os.Stat(s.path); errors.Is(err, os.ErrNotExist) {
		if err := createFile(dir, s.path); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("block store: %w", err)
	}
	if err := s.load(f, dir); err != nil {
		f.Close()
		if s.idx != nil {
			s.idx.Close()
		}
		return err
	}
	s.f = f
	return nil
}

// createFile writes a fresh block file atomically (temp file, fsync,
// rename, fsync of the directory), so a crash never leaves a file without
// its header.
func createFile(dir, path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("creating block store: %w", err)
	}
	_, err = f.Write(fileHeader())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = fsync.Dir(dir)
	}
	if err != nil {
		return fmt.Errorf("creating block store %s: %w", path, err)
	}
	return nil
}

func (s *Store) load(f *os.File, dir string) error {
	start := time.Now()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("block store: %w", err)
	}
	size := st.Size()
	hdr := make([]byte, fileHeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return fmt.Errorf("%w: %s at offset 0: reading file header: %v", ErrCorrupt, s.path, err)
	}
	if err := checkFileHeader(hdr); err != nil {
		return fmt.Errorf("%w: %s at offset 0: %v", ErrCorrupt, s.path, err)
	}
	var indexed []loc
	if !s.cfg.noIndex {
		s.idx, indexed = s.openIndex(filepath.Join(dir, indexFile), size)
	}
	res, keep, err := s.scanTail(f, size, indexed)
	if err != nil {
		var c *errCorrupt
		if errors.As(err, &c) {
			return c.report(s.path)
		}
		return fmt.Errorf("block store %s: reading: %w", s.path, err)
	}
	if res.tail < size {
		s.recovery = Recovery{TruncatedAt: res.tail, TruncatedBytes: size - res.tail}
		s.log.Warn("block store: dropping torn tail left by a crash",
			"path", s.path, "offset", res.tail, "bytes", size-res.tail, "height", len(res.locs))
		if err := f.Truncate(res.tail); err != nil {
			return fmt.Errorf("block store %s: truncating torn tail at %d: %w", s.path, res.tail, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("block store %s: %w", s.path, err)
		}
	}
	s.size, s.locs, s.last = res.tail, res.locs, res.last
	s.rewriteIndex(res.locs, keep, keep == 0 && len(indexed) > 0)
	if took := time.Since(start); took > slowOpen {
		s.log.Info("block store opened", "path", s.path, "height", len(res.locs), "bytes", res.tail,
			"indexed_blocks", keep, "read_bytes", res.tail-res.from, "seconds", took.Seconds())
	}
	return nil
}

// slowOpen is the opening time above which Open logs what it read, and
// the interval of its progress lines while it reads.
const slowOpen = time.Second

// scanTail returns the blocks of the file: the indexed ones up to the
// checked tail (tailStart), then those scan finds from there (checked,
// the torn tail cut as by a full scan), and how many index entries it
// kept. When the
// index is empty, or the checked part does not fit it, it scans the whole
// file and keeps none.
func (s *Store) scanTail(f *os.File, size int64, indexed []loc) (*scanResult, int, error) {
	progress := progressLog(s.log.Info, "block store: reading the chain", s.path, size, slowOpen*5)
	r := progressReader{r: f, ctx: context.Background(), done: progress}
	if j := tailStart(indexed); j > 0 {
		res, err := scan(r, indexed[j].off, uint64(j), size, s.cfg.maxBlock(), block.VerifyHeaderChain)
		if err == nil && len(res.locs) > 0 && matches(res.locs, indexed[j:]) {
			res.from = indexed[j].off
			res.locs = append(indexed[:j:j], res.locs...)
			if err := vouched(res.locs, indexed); err != nil {
				return nil, 0, err
			}
			return res, j, nil
		}
		s.log.Warn("block store: its index does not match the block file; reading the whole chain",
			"path", s.path, "indexed_blocks", len(indexed), "err", err)
	}
	res, err := scan(r, fileHeaderSize, 0, size, s.cfg.maxBlock(), block.VerifyHeaderChain)
	if err != nil {
		return nil, 0, err
	}
	if matches(res.locs, indexed) {
		if err := vouched(res.locs, indexed); err != nil {
			return nil, 0, err
		}
	}
	res.from = fileHeaderSize
	return res, 0, nil
}

// vouched returns an errCorrupt when the index lists a record that the
// scan (which found scanned) cut as a torn tail. Index entries are written
// only after their record is fdatasync'ed, and readIndex keeps only those
// lying wholly inside blocks.dat: such a record was acknowledged, and its
// damage is corruption, not a crash in the middle of an append. A record
// the index does not list (a crash before its entry was written, or a file
// cut back so that it no longer holds the whole record) is a torn tail.
// The caller checks that the index agrees with the records scanned.
func vouched(scanned, indexed []loc) *errCorrupt {
	if k := len(scanned); k < len(indexed) {
		return &errCorrupt{indexed[k].off, fmt.Sprintf("block %d is damaged; blocks.idx lists its record (%d bytes) as written and synced, so this is not a torn tail",
			k, indexed[k].end()-indexed[k].off)}
	}
	return nil
}

// matches reports whether the records scanned agree with the index
// entries for them (an index of another file with the same record
// boundaries differs in the checksums).
func matches(scanned, indexed []loc) bool {
	for i := range min(len(scanned), len(indexed)) {
		if scanned[i] != indexed[i] {
			return false
		}
	}
	return true
}

// Verify reads every block stored when it is called and checks it as a
// full scan does: record and data checksums, block numbers and the hash
// chain of the headers, and that the blocks are where the store serves
// them from. Open checks only the tail (see index.go); Verify is the
// explicit check of the whole chain, for an operator or a background job.
// progress, if not nil, is called now and then with the bytes read and the
// total. It returns an error wrapping ErrCorrupt naming the damage, or
// ctx's error, or ErrClosed. Appends may run meanwhile.
func (s *Store) Verify(ctx context.Context, progress func(done, total int64)) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	f, locs := s.f, s.locs[:len(s.locs):len(s.locs)]
	s.mu.RUnlock()
	size := int64(fileHeaderSize)
	if len(locs) > 0 {
		size = locs[len(locs)-1].end()
	}
	done := func(int64) {}
	if progress != nil {
		done = func(n int64) { progress(min(n, size), size) }
	}
	hdr := make([]byte, fileHeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return s.verifyReadErr(err)
	}
	if err := checkFileHeader(hdr); err != nil {
		return fmt.Errorf("%w: %s at offset 0: %v", ErrCorrupt, s.path, err)
	}
	res, err := scan(progressReader{r: f, ctx: ctx, done: done}, fileHeaderSize, 0, size, s.cfg.maxBlock(), block.VerifyHeaderChain)
	if err != nil {
		var c *errCorrupt
		if errors.As(err, &c) {
			return c.report(s.path)
		}
		return s.verifyReadErr(err)
	}
	if len(res.locs) != len(locs) {
		// A damaged record with nothing intact after it: a torn tail to
		// scan, but these blocks were acknowledged.
		return fmt.Errorf("%w: %s at offset %d: block %d is damaged (the store holds %d blocks); restore the store from a peer or backup",
			ErrCorrupt, s.path, res.tail, len(res.locs), len(locs))
	}
	if err := compareIndex(s.path, res.locs, locs); err != nil {
		return err
	}
	done(size)
	return nil
}

// compareIndex reports the first block whose record in blocks.dat
// (scanned) differs from what the index says (indexed), naming the field.
// Open trusts the index for every block before the tail it checks, so
// only removing blocks.idx makes the next Open read the whole chain and
// rewrite it; a restart alone keeps the wrong entry.
func compareIndex(path string, scanned, indexed []loc) error {
	for i := range min(len(scanned), len(indexed)) {
		d, x := scanned[i], indexed[i]
		var field string
		switch {
		case d.off != x.off:
			field = fmt.Sprintf("its record is at offset %d, blocks.idx says %d", d.off, x.off)
		case d.n != x.n:
			field = fmt.Sprintf("its length is %d bytes, blocks.idx says %d", d.n, x.n)
		case d.crc != x.crc:
			field = fmt.Sprintf("its data checksum is %#08x, blocks.idx says %#08x", d.crc, x.crc)
		default:
			continue
		}
		return fmt.Errorf("%w: %s: the offset index disagrees with intact block %d: %s; stop memberd, remove %s and start it (it reads the whole chain once and rewrites the index)",
			ErrCorrupt, path, i, field, filepath.Join(filepath.Dir(path), indexFile))
	}
	return nil
}

func (s *Store) verifyReadErr(err error) error {
	if errors.Is(err, os.ErrClosed) {
		return ErrClosed
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("block store %s: verifying: %w", s.path, err)
}

// Recovered reports what Open did to the file.
func (s *Store) Recovered() Recovery { return s.recovery }

// Height returns the number of blocks (the next block number).
func (s *Store) Height() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return uint64(len(s.locs))
}

// LastHeader returns a copy of the last block's header, or nil when empty.
func (s *Store) LastHeader() *common.BlockHeader {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.last == nil {
		return nil
	}
	return proto.Clone(s.last).(*common.BlockHeader)
}

// Append verifies that b is the next block (number = Height(), previous
// hash = hash of the last header, data hash matches its data) and stores it
// durably. Appending to an empty store requires block 0.
func (s *Store) Append(b *common.Block) error {
	raw, err := block.Marshal(b)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotNext, err)
	}
	return s.append([][]byte{raw}, []*common.Block{b})
}

// AppendRaw is Append for a marshalled block (e.g. received from a peer);
// the bytes are stored exactly as given.
func (s *Store) AppendRaw(raw []byte) error {
	b, err := block.Unmarshal(raw)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotNext, err)
	}
	return s.append([][]byte{raw}, []*common.Block{b})
}

// AppendRawBatch is AppendBatch for marshalled blocks (e.g. a run
// fetched from a peer): one write and one fsync; all or none.
func (s *Store) AppendRawBatch(raws [][]byte) error {
	blocks := make([]*common.Block, len(raws))
	for i, raw := range raws {
		b, err := block.Unmarshal(raw)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotNext, err)
		}
		blocks[i] = b
	}
	return s.append(raws, blocks)
}

// AppendBatch appends several consecutive blocks with one write and one
// fsync (group commit). Either all are durable on return, or none is added.
func (s *Store) AppendBatch(blocks []*common.Block) error {
	raws := make([][]byte, len(blocks))
	for i, b := range blocks {
		raw, err := block.Marshal(b)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotNext, err)
		}
		raws[i] = raw
	}
	return s.append(raws, blocks)
}

func (s *Store) append(raws [][]byte, blocks []*common.Block) error {
	if len(raws) == 0 {
		return nil
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.RLock()
	closed, height, last := s.closed, uint64(len(s.locs)), s.last
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if s.failed != nil {
		return fmt.Errorf("%w: %v; reopen the store", ErrFailed, s.failed)
	}
	max := s.cfg.maxBlock()
	total := 0
	for i, b := range blocks {
		if len(raws[i]) > int(max) {
			return fmt.Errorf("%w: block %d is %d bytes, limit %d", ErrTooLarge, b.Header.Number, len(raws[i]), max)
		}
		if b.Header.Number != height+uint64(i) {
			return fmt.Errorf("%w: got block %d, store height is %d", ErrNotNext, b.Header.Number, height+uint64(i))
		}
		if err := block.Verify(b, nil); err != nil {
			return fmt.Errorf("%w: %v", ErrNotNext, err)
		}
		if last != nil {
			if err := block.VerifyHeaderChain(b.Header, last); err != nil {
				return fmt.Errorf("%w: %v", ErrNotNext, err)
			}
		}
		last = b.Header
		total += recHeaderSize + len(raws[i])
	}
	buf := make([]byte, 0, total)
	newLocs := make([]loc, len(raws))
	off := s.size
	for i, raw := range raws {
		newLocs[i] = loc{off: off + int64(len(buf)), n: uint32(len(raw)), crc: crc(raw)}
		buf = appendRecord(buf, raw)
	}
	if _, err := s.f.WriteAt(buf, off); err != nil {
		// Undo the partial write so the next append starts clean; if even
		// that fails, stop appending (Open will cut the torn tail).
		if terr := s.f.Truncate(off); terr != nil {
			s.failed = err
		}
		s.log.Error("block store: write failed", "path", s.path, "offset", off, "err", err)
		return fmt.Errorf("block store %s: writing block %d: %w", s.path, blocks[0].Header.Number, err)
	}
	if err := s.fsync(s.f); err != nil {
		s.failed = err
		s.log.Error("block store: fsync failed; refusing further appends", "path", s.path, "err", err)
		return fmt.Errorf("%w: %s: fsync after block %d: %v", ErrFailed, s.path, blocks[len(blocks)-1].Header.Number, err)
	}
	s.size = off + int64(len(buf))
	s.indexAppend(newLocs)

	s.mu.Lock()
	s.locs = append(s.locs, newLocs...)
	s.last = proto.Clone(last).(*common.BlockHeader)
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// GetRaw returns the stored bytes of block n (a marshalled common.Block),
// checking their checksum.
func (s *Store) GetRaw(n uint64) ([]byte, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrClosed
	}
	if n >= uint64(len(s.locs)) {
		h := len(s.locs)
		s.mu.RUnlock()
		return nil, fmt.Errorf("%w: block %d, height %d", ErrNotFound, n, h)
	}
	l := s.locs[n]
	f := s.f
	s.mu.RUnlock()

	raw := make([]byte, l.n)
	if _, err := f.ReadAt(raw, l.off+recHeaderSize); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("block store %s: reading block %d at offset %d: %w", s.path, n, l.off, err)
	}
	if crc(raw) != l.crc {
		return nil, fmt.Errorf("%w: %s at offset %d: block %d data checksum mismatch; restore the store from a peer or backup", ErrCorrupt, s.path, l.off, n)
	}
	return raw, nil
}

// Get returns block n.
func (s *Store) Get(n uint64) (*common.Block, error) {
	raw, err := s.GetRaw(n)
	if err != nil {
		return nil, err
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: block %d: %v", ErrCorrupt, s.path, n, err)
	}
	return b, nil
}

// Wait blocks until block n exists (Height() > n), ctx is done, or the
// store is closed. It is what Deliver's BLOCK_UNTIL_READY waits on.
func (s *Store) Wait(ctx context.Context, n uint64) error {
	for {
		s.mu.RLock()
		h, ch, closed := uint64(len(s.locs)), s.notify, s.closed
		s.mu.RUnlock()
		if h > n {
			return nil
		}
		if closed {
			return ErrClosed
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Close releases the file and the directory lock and wakes every Wait.
// It is idempotent.
func (s *Store) Close() error {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.notify)
	err := s.f.Close()
	if s.idx != nil {
		if ierr := s.idx.Close(); err == nil {
			err = ierr
		}
	}
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	return err
}

package blockstore

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const vectorsDir = "../testdata/fabric-2.5.16"

func fabricBlocks(t testing.TB) []*common.Block {
	t.Helper()
	var out []*common.Block
	for _, name := range []string{"vectors-0.block", "vectors-1.block", "vectors-2.block"} {
		raw, err := os.ReadFile(filepath.Join(vectorsDir, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := block.Unmarshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

var testKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

// nextBlocks returns n signed blocks following prev, each with envs
// envelopes of envSize random bytes (the store does not look inside them).
func nextBlocks(t testing.TB, prev *common.Block, n, envs, envSize int) []*common.Block {
	t.Helper()
	var out []*common.Block
	for range n {
		data := make([][]byte, envs)
		for j := range data {
			data[j] = make([]byte, envSize)
			rand.Read(data[j])
		}
		b := block.New(prev.Header.Number+1, block.HeaderHash(prev.Header), data)
		if err := block.Sign(b, testKey, []byte("creator"), 0, nil, rand.Reader); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		prev = b
	}
	return out
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func mustOpen(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func appendAll(t testing.TB, s *Store, bs []*common.Block) {
	t.Helper()
	for _, b := range bs {
		if err := s.Append(b); err != nil {
			t.Fatalf("Append block %d: %v", b.Header.Number, err)
		}
	}
}

func checkBlocks(t testing.TB, s *Store, want []*common.Block) {
	t.Helper()
	if h := s.Height(); h != uint64(len(want)) {
		t.Fatalf("height %d, want %d", h, len(want))
	}
	for i, w := range want {
		got, err := s.Get(uint64(i))
		if err != nil {
			t.Fatalf("Get(%d): %v", i, err)
		}
		if !proto.Equal(got, w) {
			t.Fatalf("block %d differs after storing", i)
		}
	}
	if len(want) > 0 && !proto.Equal(s.LastHeader(), want[len(want)-1].Header) {
		t.Fatalf("LastHeader differs")
	}
}

func TestAppendGetReopen(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if s.Height() != 0 || s.LastHeader() != nil {
		t.Fatalf("new store: height %d", s.Height())
	}
	chain := fabricBlocks(t)
	chain = append(chain, nextBlocks(t, chain[2], 5, 3, 200)...)
	appendAll(t, s, chain[:3])
	// Fabric's bytes are stored as received by AppendRaw.
	raw1, _ := os.ReadFile(filepath.Join(vectorsDir, "vectors-1.block"))
	if got, err := s.GetRaw(1); err != nil || !proto.Equal(mustUnmarshal(t, got), mustUnmarshal(t, raw1)) {
		t.Fatalf("GetRaw(1): %v", err)
	}
	if err := s.AppendBatch(chain[3:6]); err != nil {
		t.Fatal(err)
	}
	raw6, _ := block.Marshal(chain[6])
	if err := s.AppendRaw(raw6); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetRaw(6); !bytes.Equal(got, raw6) {
		t.Fatalf("AppendRaw did not keep the bytes")
	}
	appendAll(t, s, chain[7:])
	checkBlocks(t, s, chain)
	if _, err := s.Get(uint64(len(chain))); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get past the end: %v, want ErrNotFound", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Append(chain[0]); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v", err)
	}
	if _, err := s.Get(0); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}

	s = mustOpen(t, dir)
	defer s.Close()
	if r := s.Recovered(); r != (Recovery{}) {
		t.Errorf("clean reopen recovered %+v", r)
	}
	checkBlocks(t, s, chain)
	// Fabric-verifiable after the round trip.
	for i := 1; i < len(chain); i++ {
		b, _ := s.Get(uint64(i))
		prev, _ := s.Get(uint64(i - 1))
		if err := block.Verify(b, prev); err != nil {
			t.Errorf("block %d: %v", i, err)
		}
		if i <= 2 {
			if err := block.VerifySignatures(b, block.VerifyCreatorSignature); err != nil {
				t.Errorf("Fabric block %d signature: %v", i, err)
			}
		}
	}
}

func mustUnmarshal(t testing.TB, raw []byte) *common.Block {
	b, err := block.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAppendRejectsNonNext(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	defer s.Close()
	chain := fabricBlocks(t)
	if err := s.Append(chain[1]); !errors.Is(err, ErrNotNext) {
		t.Errorf("block 1 into an empty store: %v", err)
	}
	appendAll(t, s, chain[:2])
	badPrev := proto.Clone(chain[2]).(*common.Block)
	badPrev.Header.PreviousHash = bytes.Repeat([]byte{7}, 32)
	badData := proto.Clone(chain[2]).(*common.Block)
	badData.Data.Data = badData.Data.Data[1:]
	other := nextBlocks(t, chain[1], 1, 1, 10)[0] // a valid block 2 of another fork
	other.Header.Number = 3
	cases := map[string]*common.Block{
		"old block":           chain[1],
		"skip ahead":          other,
		"wrong previous hash": badPrev,
		"wrong data hash":     badData,
		"no header":           {Data: &common.BlockData{}, Metadata: &common.BlockMetadata{}},
	}
	for name, b := range cases {
		if err := s.Append(b); !errors.Is(err, ErrNotNext) {
			t.Errorf("%s: %v, want ErrNotNext", name, err)
		}
	}
	if err := s.AppendBatch([]*common.Block{chain[2], chain[2]}); !errors.Is(err, ErrNotNext) {
		t.Errorf("batch with a repeated block: %v", err)
	}
	if s.Height() != 2 {
		t.Fatalf("rejected appends changed the height to %d", s.Height())
	}
	if err := s.AppendRaw([]byte{0xff}); !errors.Is(err, ErrNotNext) {
		t.Errorf("garbage AppendRaw: %v", err)
	}
	appendAll(t, s, chain[2:])
	checkBlocks(t, s, chain)
}

func TestTooLarge(t *testing.T) {
	s, err := Open(t.TempDir(), Config{MaxBlockBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Append(fabricBlocks(t)[0]); !errors.Is(err, ErrTooLarge) {
		t.Errorf("13 KB block with a 1000-byte limit: %v", err)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if _, err := Open(dir, Config{}); !errors.Is(err, ErrLocked) {
		t.Errorf("second Open: %v, want ErrLocked", err)
	}
	s.Close()
	s2 := mustOpen(t, dir)
	s2.Close()
}

// buildStore writes a store with chain and returns the file bytes and the
// offset where the last record starts.
func buildStore(t testing.TB, chain []*common.Block) (file []byte, lastOff int64) {
	t.Helper()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	appendAll(t, s, chain)
	lastOff = s.locs[len(s.locs)-1].off
	s.Close()
	file, err := os.ReadFile(filepath.Join(dir, dataFile))
	if err != nil {
		t.Fatal(err)
	}
	return file, lastOff
}

func writeStore(t testing.TB, dir string, file []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, dataFile), file, 0o640); err != nil {
		t.Fatal(err)
	}
}

// A crash can leave any prefix of the last append: Open keeps every earlier
// block, cuts the rest, and the store takes the lost block again. Every
// byte offset of the last record of a small block of ours (sampled under
// -short), and for a real Fabric block (vectors-2, ~5.5 KB) every offset in
// its record header and last 32 bytes plus every 61st in between.
func TestTornTailEveryOffset(t *testing.T) {
	fabric := fabricBlocks(t)
	own := append(fabricBlocks(t), nextBlocks(t, fabric[2], 1, 1, 40)...)
	for _, tc := range []struct {
		name          string
		chain         []*common.Block
		stride, short int64 // stride between the edges, normally and under -short
	}{
		{"own small block", own, 1, 13},
		{"Fabric vectors-2", fabric, 61, 397},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stride := tc.stride
			if testing.Short() {
				stride = tc.short
			}
			tornTailEveryOffset(t, tc.chain, stride)
		})
	}
}

// tornTailEveryOffset cuts the store file inside its last record at every
// offset of the record header and of its last 32 bytes, and every stride
// bytes in between.
func tornTailEveryOffset(t *testing.T, chain []*common.Block, stride int64) {
	file, lastOff := buildStore(t, chain)
	end := int64(len(file))
	var cuts []int64
	for cut := lastOff; cut < end; {
		cuts = append(cuts, cut)
		if cut < lastOff+recHeaderSize+8 || cut >= end-32 {
			cut++
		} else {
			cut = min(cut+stride, end-32)
		}
	}
	dir := t.TempDir()
	for _, cut := range cuts {
		writeStore(t, dir, file[:cut])
		s, err := Open(dir, Config{})
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if s.Height() != uint64(len(chain)-1) {
			t.Fatalf("cut at %d: height %d, want %d", cut, s.Height(), len(chain)-1)
		}
		want := Recovery{TruncatedAt: lastOff, TruncatedBytes: cut - lastOff}
		if cut == lastOff {
			want = Recovery{} // the file ends cleanly after the previous record
		}
		if r := s.Recovered(); r != want {
			t.Fatalf("cut at %d: recovery %+v", cut, r)
		}
		if err := s.Append(chain[len(chain)-1]); err != nil {
			t.Fatalf("cut at %d: append after recovery: %v", cut, err)
		}
		s.Close()
	}
	// The last round's file is whole again.
	got, _ := os.ReadFile(filepath.Join(dir, dataFile))
	if !bytes.Equal(got, file) {
		t.Fatalf("file after recovery and re-append differs from the original")
	}
	s := mustOpen(t, dir)
	defer s.Close()
	checkBlocks(t, s, chain)
}

// Crash simulation on a bigger Fabric block: truncate mid-record at sampled
// offsets, and damage that a torn write can also leave (zeroed or garbage
// tail, a complete last record with a bad checksum).
func TestTornTailShapes(t *testing.T) {
	chain := fabricBlocks(t)
	file, lastOff := buildStore(t, chain)
	zeros := make([]byte, 4096)
	flipLast := bytes.Clone(file)
	flipLast[len(flipLast)-5] ^= 1
	flipLen := bytes.Clone(file)
	flipLen[lastOff] ^= 0x80
	shapes := []struct {
		name    string
		content []byte
		keep    int // blocks that survive
	}{
		{"mid header", file[:lastOff+5], 2},
		{"mid data", file[:lastOff+recHeaderSize+1000], 2},
		{"one byte short", file[:len(file)-1], 2},
		{"zero-filled last data", append(bytes.Clone(file[:lastOff+recHeaderSize]), make([]byte, len(file)-int(lastOff)-recHeaderSize)...), 2},
		{"last record bad data crc", flipLast, 2},
		{"last record bad length", flipLen, 2},
		{"zeros after the last record", append(bytes.Clone(file), zeros...), 3},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			dir := t.TempDir()
			writeStore(t, dir, sh.content)
			s := mustOpen(t, dir)
			defer s.Close()
			checkBlocks(t, s, chain[:sh.keep])
			if r := s.Recovered(); r.TruncatedBytes == 0 {
				t.Errorf("no truncation reported")
			}
			appendAll(t, s, chain[sh.keep:])
			checkBlocks(t, s, chain)
		})
	}
}

func TestCorruptMiddle(t *testing.T) {
	chain := fabricBlocks(t)
	chain = append(chain, nextBlocks(t, chain[2], 2, 2, 100)...)
	file, _ := buildStore(t, chain)
	dir := t.TempDir()
	s := mustOpen(t, dir)
	appendAll(t, s, chain)
	off1, off2 := s.locs[1].off, s.locs[2].off
	s.Close()

	cases := map[string]func([]byte){
		"data byte of block 1":   func(f []byte) { f[off1+recHeaderSize+100] ^= 1 },
		"length of block 1":      func(f []byte) { f[off1] ^= 1 },
		"header crc of block 2":  func(f []byte) { f[off2+9] ^= 0xff },
		"block 1 swapped for 2":  func(f []byte) { copy(f[off1:], file[off2:]) },
		"file magic":             func(f []byte) { f[0] = 'x' },
		"zeros over block 1 hdr": func(f []byte) { copy(f[off1:], make([]byte, recHeaderSize)) },
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			f := bytes.Clone(file)
			damage(f)
			writeStore(t, d, f)
			_, err := Open(d, Config{})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), filepath.Join(d, dataFile)) || !strings.Contains(err.Error(), "offset") {
				t.Errorf("error does not name the file and offset: %v", err)
			}
			t.Log(err)
			// The damaged file is left alone for the operator.
			after, _ := os.ReadFile(filepath.Join(d, dataFile))
			if !bytes.Equal(after, f) {
				t.Errorf("Open modified a corrupt store")
			}
		})
	}
	t.Run("error names the damaged offset", func(t *testing.T) {
		if want := fmt.Sprintf("offset %d", off1); !strings.Contains(corruptErr(t, file, func(f []byte) { f[off1+recHeaderSize+100] ^= 1 }), want) {
			t.Errorf("error does not name offset %d", off1)
		}
	})
}

func corruptErr(t *testing.T, file []byte, damage func([]byte)) string {
	d := t.TempDir()
	f := bytes.Clone(file)
	damage(f)
	writeStore(t, d, f)
	_, err := Open(d, Config{})
	if err == nil {
		t.Fatal("Open succeeded")
	}
	return err.Error()
}

// Damage after Open is caught on read.
func TestGetDetectsCorruption(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	defer s.Close()
	chain := fabricBlocks(t)
	appendAll(t, s, chain)
	f, err := os.OpenFile(filepath.Join(dir, dataFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xAA}, s.locs[1].off+recHeaderSize+50); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := s.Get(1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a damaged block: %v, want ErrCorrupt", err)
	}
	if _, err := s.Get(2); err != nil {
		t.Fatalf("Get of an intact block: %v", err)
	}
}

// A failed fsync makes the store refuse appends (the data may not be on
// disk); a reopen recovers and the block can be appended again.
func TestFsyncFailure(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	chain := fabricBlocks(t)
	appendAll(t, s, chain[:2])
	syncs := 0
	s.fsync = func(f *os.File) error { syncs++; return errors.New("EIO") }
	if err := s.Append(chain[2]); !errors.Is(err, ErrFailed) {
		t.Fatalf("Append with failing fsync: %v, want ErrFailed", err)
	}
	if syncs != 1 {
		t.Fatalf("Append called fsync %d times", syncs)
	}
	if s.Height() != 2 {
		t.Fatalf("a block whose fsync failed is visible: height %d", s.Height())
	}
	s.fsync = fdatasync
	if err := s.Append(chain[2]); !errors.Is(err, ErrFailed) {
		t.Fatalf("Append after a failed fsync: %v, want ErrFailed", err)
	}
	s.Close()
	s = mustOpen(t, dir)
	defer s.Close()
	if s.Height() == 2 {
		appendAll(t, s, chain[2:])
	}
	checkBlocks(t, s, chain)
}

// Every append is fsynced before it returns (and before it is visible).
func TestAppendSyncsBeforeVisible(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	defer s.Close()
	chain := fabricBlocks(t)
	var heights []uint64
	s.fsync = func(f *os.File) error { heights = append(heights, s.Height()); return fdatasync(f) }
	appendAll(t, s, chain[:2])
	if err := s.AppendBatch(chain[2:]); err != nil {
		t.Fatal(err)
	}
	if want := []uint64{0, 1, 2}; fmt.Sprint(heights) != fmt.Sprint(want) {
		t.Fatalf("fsync saw heights %v, want %v (one fsync per append, before publishing)", heights, want)
	}
}

func TestWait(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	chain := fabricBlocks(t)
	appendAll(t, s, chain[:1])
	ctx := context.Background()
	if err := s.Wait(ctx, 0); err != nil {
		t.Fatalf("Wait for an existing block: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx, 2) }()
	appendAll(t, s, chain[1:2])
	select {
	case err := <-done:
		t.Fatalf("Wait(2) returned at height 2: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	appendAll(t, s, chain[2:])
	if err := <-done; err != nil {
		t.Fatalf("Wait(2): %v", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	go func() { done <- s.Wait(cctx, 10) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel: %v", err)
	}

	go func() { done <- s.Wait(ctx, 10) }()
	time.Sleep(5 * time.Millisecond)
	s.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait across Close: %v", err)
	}
	if err := s.Wait(ctx, 10); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait on a closed store: %v", err)
	}
}

// Readers and waiters run while blocks are appended (run with -race).
func TestConcurrentReaders(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	defer s.Close()
	first := fabricBlocks(t)[0]
	n := 200
	if testing.Short() {
		n = 40
	}
	chain := append([]*common.Block{first}, nextBlocks(t, first, n-1, 2, 64)...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(r % 2); i < uint64(n); i++ {
				if err := s.Wait(ctx, i); err != nil {
					errs <- err
					return
				}
				b, err := s.Get(i)
				if err != nil || b.Header.Number != i {
					errs <- fmt.Errorf("reader %d block %d: %v", r, i, err)
					return
				}
			}
		}()
	}
	appendAll(t, s, chain)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

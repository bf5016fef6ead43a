package app

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/blockstore"
)

// writeChain stores a chain of 200 small blocks in a new store in dir and
// returns them.
func writeChain(t *testing.T, dir string) []*common.Block {
	t.Helper()
	s, err := blockstore.Open(dir, blockstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var prev []byte
	blocks := make([]*common.Block, 200)
	for i := range blocks {
		blocks[i] = block.New(uint64(i), prev, [][]byte{[]byte(strings.Repeat("x", 100+i))})
		prev = block.HeaderHash(blocks[i].Header)
	}
	if err := s.AppendBatch(blocks); err != nil {
		t.Fatal(err)
	}
	return blocks
}

// TestLedgerVerify: `ledger verify` passes an intact store and names the
// damage of a block in the middle of the chain, which a start no longer
// reads.
func TestLedgerVerify(t *testing.T) {
	dir := t.TempDir()
	blocks := writeChain(t, dir)

	code, out, errs := run(t, "ledger", "verify", "--progress", "0", dir)
	if code != ExitOK || !strings.Contains(out, "200 blocks verified") || !strings.Contains(errs, "verified") {
		t.Fatalf("intact store: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	// Damage block 20's data.
	raw, err := block.Marshal(blocks[20])
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "blocks.dat")
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := strings.Index(string(file), string(raw))
	if at < 0 {
		t.Fatal("block 20 not found in the file")
	}
	file[at+len(raw)-3] ^= 0xff
	if err := os.WriteFile(path, file, 0o640); err != nil {
		t.Fatal(err)
	}
	code, _, errs = run(t, "ledger", "verify", dir)
	if code != ExitRuntime || !strings.Contains(errs, "block store corrupt") || !strings.Contains(errs, "offset") {
		t.Fatalf("damaged store: exit %d, stderr %q", code, errs)
	}
}

// TestLedgerVerifyMissingStore: a directory that holds no block store (a
// typo, or DATA_DIR/CHANNEL instead of DATA_DIR/CHANNEL/blocks) is a usage
// error naming the path and what a block directory is; nothing is created.
// It used to create an empty store and report "0 blocks verified".
func TestLedgerVerifyMissingStore(t *testing.T) {
	top := filepath.Join(t.TempDir(), "no-such-channel")
	dir := filepath.Join(top, "blocks")
	code, out, errs := run(t, "ledger", "verify", dir)
	if code != ExitUsage || !strings.Contains(errs, filepath.Join(dir, "blocks.dat")) || !strings.Contains(errs, "DATA_DIR/CHANNEL/blocks") {
		t.Fatalf("missing store: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if _, err := os.Stat(top); !os.IsNotExist(err) {
		t.Fatalf("verify created %s: %v", top, err)
	}
}

// TestLedgerVerifyLeavesEvidence: damage in the last block (acknowledged:
// the index lists it) and a torn tail both exit 1 naming the offset and
// the fix, and blocks.dat is left as it was. Damage in the last block used
// to be cut as a torn tail by the Open that verify made, and the chain one
// block shorter reported verified.
func TestLedgerVerifyLeavesEvidence(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(file []byte) []byte
		want   string
	}{
		{"damaged last block", func(file []byte) []byte { file[len(file)-3] ^= 0xff; return file }, "block 199 is damaged"},
		{"torn tail", func(file []byte) []byte { return file[:len(file)-100] }, "torn tail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeChain(t, dir)
			path := filepath.Join(dir, "blocks.dat")
			file, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			file = tc.damage(file)
			if err := os.WriteFile(path, file, 0o640); err != nil {
				t.Fatal(err)
			}
			code, out, errs := run(t, "ledger", "verify", dir)
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if code != ExitRuntime || !strings.Contains(errs, tc.want) || !strings.Contains(errs, "at offset") || !bytes.Equal(after, file) {
				t.Fatalf("exit %d, stdout %q, stderr %q; blocks.dat %d -> %d bytes, unchanged %v",
					code, out, errs, len(file), len(after), bytes.Equal(after, file))
			}
		})
	}
}

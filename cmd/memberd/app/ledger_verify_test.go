package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/blockstore"
)

// TestLedgerVerify: `ledger verify` passes an intact store and names the
// damage of a block in the middle of the chain, which a start no longer
// reads.
func TestLedgerVerify(t *testing.T) {
	dir := t.TempDir()
	s, err := blockstore.Open(dir, blockstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var prev []byte
	blocks := make([]*common.Block, 200)
	for i := range blocks {
		blocks[i] = block.New(uint64(i), prev, [][]byte{[]byte(strings.Repeat("x", 100+i))})
		prev = block.HeaderHash(blocks[i].Header)
	}
	if err := s.AppendBatch(blocks); err != nil {
		t.Fatal(err)
	}
	s.Close()

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

package app

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/node/blockstore"
)

// newLedgerVerifyCmd is the full check of a stored chain that a start no
// longer makes (a start checks the tail only, so that it costs the same
// with years of chain).
func newLedgerVerifyCmd(e *env) *cobra.Command {
	var every time.Duration
	c := &cobra.Command{
		Use:   "verify BLOCK_DIR",
		Short: "Check every stored block of a channel (checksums, numbers, hash chain) while the member is stopped",
		Long: `Read the whole block store of a channel, e.g. DATA_DIR/CHANNEL/blocks under
the appliance's ledger.data_dir (the directory that holds blocks.dat), and
check every block: record and data checksums, block numbers and the hash
chain of the headers, and the offset index blocks.idx against them.
memberd run checks only the tail of the chain at start-up (a torn last
block is cut and fetched again); this is the full check, for after a disk or
file-system fault, or on a schedule. The member must be stopped (the store
is locked while it runs). It only reads: it creates nothing, and cuts or
rewrites nothing, so the damage it reports stays there to be examined. It
prints its progress, and exits 1 naming the offset of the first damage and
the fix: a restore from a peer or backup for a damaged block, the next start
for a torn tail, the removal of blocks.idx for a wrong index entry. A
BLOCK_DIR without blocks.dat exits 2.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			last := time.Now()
			height, err := blockstore.VerifyDir(cmdContext(cmd), args[0], blockstore.Config{}, func(done, total int64) {
				if time.Since(last) >= every {
					last = time.Now()
					fmt.Fprintf(e.stderr, "verified %d of %d bytes (%.0f%%)\n", done, total, 100*float64(done)/float64(max(total, 1)))
				}
			})
			if errors.Is(err, blockstore.ErrNoStore) {
				return &UsageError{Err: fmt.Errorf("ledger verify: %w", err)}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: %d blocks verified in %.1fs\n", args[0], height, time.Since(start).Seconds())
			return nil
		},
	}
	c.Flags().DurationVar(&every, "progress", 5*time.Second, "interval between progress lines")
	return c
}

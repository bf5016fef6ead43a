package app

import (
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
the appliance's ledger.data_dir, and check every block: record and data
checksums, block numbers and the hash chain of the headers. memberd run
checks only the tail of the chain at start-up (a torn last block is cut and
fetched again); this is the full check, for after a disk or file-system
fault, or on a schedule. The member must be stopped (the store is locked
while it runs). It prints its progress, and exits 1 naming the offset of
the first damage, which a restore from a peer or backup repairs.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			s, err := blockstore.Open(args[0], blockstore.Config{Logger: e.log})
			if err != nil {
				return err
			}
			defer s.Close()
			last := time.Now()
			err = s.Verify(cmdContext(cmd), func(done, total int64) {
				if time.Since(last) >= every {
					last = time.Now()
					fmt.Fprintf(e.stderr, "verified %d of %d bytes (%.0f%%)\n", done, total, 100*float64(done)/float64(max(total, 1)))
				}
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: %d blocks verified in %.1fs\n", args[0], s.Height(), time.Since(start).Seconds())
			return nil
		},
	}
	c.Flags().DurationVar(&every, "progress", 5*time.Second, "interval between progress lines")
	return c
}

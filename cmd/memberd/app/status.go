package app

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/statusview"
)

func newStatusCmd(e *env) *cobra.Command {
	var (
		addr    string
		asJSON  bool
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the status of a running appliance or relay (from its admin endpoint)",
		Long: `status asks the admin endpoint of a running memberd (run or relay) for its
/status document and prints it as tables: for an appliance, its policy
version and identity expiry, each relay with its state, path (quic/tcp/proxy),
whether it is the one in use and its RTT, each peer with the age of its last
WireGuard handshake, the ledger's raft role, height and leader; for a relay,
the members connected. Warnings follow (UDP buffers too small for QUIC, a
certificate expiring within 30 days, no relay connected, ...), each saying
what to do. --json prints the document as served.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			doc, err := statusview.Fetch(ctx, addr)
			if err != nil {
				return err
			}
			if asJSON {
				_, err = e.stdout.Write(doc)
				return err
			}
			if err := statusview.Render(e.stdout, doc, time.Now()); err != nil {
				return fmt.Errorf("status from %s is not JSON: %w", addr, err)
			}
			return nil
		},
	}
	c.Flags().StringVar(&addr, "admin", admin.DefaultAddr, "admin address (host:port) of the running memberd")
	c.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON status document")
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for an answer")
	return c
}

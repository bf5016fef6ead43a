package app

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/appliance"
)

func newPolicyPushCmd(e *env) *cobra.Command {
	var adminAddr string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "push BUNDLE",
		Short: "Push a signed bundle to every member through the tunnel",
		Long: `Push a signed policy bundle to every member of the current policy.

The bundle goes to the local appliance (its admin endpoint, --admin), which
writes it into its own policy folder and sends it through the tunnel to the
push service of every other member; each writes it into its policy folder,
where its policy watcher verifies the signatures and applies it (or rejects it
and logs why). Nothing is verified here: check first with 'memberd policy verify'.

Each member answers once its watcher has decided (at most 10 s), and one line
per member shows it: applied, held (applied once the previous CONFIG block is
stored), or FAILED with the reason (unreachable, not stored, or refused).

Exit 0 when no member failed or refused it, 1 when any did.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := loadPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			results, err := appliance.PushViaAdmin(ctx, adminAddr, p.Marshal())
			if err != nil {
				return err
			}
			failed := 0
			fmt.Fprintf(e.stdout, "policy version %d (%s):\n", p.Version(), p.Hash())
			for _, r := range results {
				state := "ok"
				if !r.OK {
					state = "FAILED"
					failed++
				}
				fmt.Fprintf(e.stdout, "  %-20s %-6s %s\n", r.Member, state, r.Detail)
			}
			if failed > 0 {
				return fmt.Errorf("policy push: %d of %d members did not store or refused the bundle (see above)", failed, len(results))
			}
			return nil
		},
	}
	c.Flags().StringVar(&adminAddr, "admin", admin.DefaultAddr, "admin endpoint of the local appliance (memberd run)")
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	return c
}

package app

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/appliance"
)

func newLedgerTransferLeaderCmd(e *env) *cobra.Command {
	var adminAddr, channel string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "transfer-leader MEMBER [--channel NAME] [--admin ADDR]",
		Short: "Hand the raft leadership of the ledger's channel to consenter MEMBER",
		Long: `Hand the raft leadership of the ledger's channel from the local appliance
(its admin endpoint, --admin), which must lead the channel, to consenter
MEMBER, and wait until MEMBER leads. The leader cuts and signs the blocks:
use this before maintenance of the leader's host, or to have a given
consenter sign the blocks (e.g. to check that stock peers accept a new
consenter's blocks). 'memberd status' shows which member leads.

Refused when the local appliance does not lead (the answer names the
leader) or MEMBER is not a consenter. Raft completes the transfer only when
MEMBER is caught up; otherwise the leadership may stay or go elsewhere, and
the command fails saying who leads now. An appliance that orders several
channels (ledger.channels in the policy) hands over the one --channel names;
without it, its first channel.

Exit 0 once MEMBER leads, 1 otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmdContext(cmd), timeout)
			defer cancel()
			res, err := appliance.TransferLeaderViaAdmin(ctx, adminAddr, channel, args[0])
			if err != nil {
				return err
			}
			if res.Already || res.From == res.Leader {
				fmt.Fprintf(e.stdout, "channel %s: %s already leads (raft id %d, term %d)\n", res.Channel, res.Leader, res.RaftID, res.Term)
				return nil
			}
			fmt.Fprintf(e.stdout, "channel %s: leadership handed from %s to %s (raft id %d, term %d)\n", res.Channel, res.From, res.Leader, res.RaftID, res.Term)
			return nil
		},
	}
	c.Flags().StringVar(&adminAddr, "admin", admin.DefaultAddr, "admin endpoint of the local appliance (memberd run)")
	c.Flags().StringVar(&channel, "channel", "", "the channel whose leadership to hand over (default: the appliance's first channel)")
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	return c
}

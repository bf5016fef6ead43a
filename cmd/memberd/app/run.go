package app

import "github.com/spf13/cobra"

func newRunCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "run", Short: "Run the appliance (ledger node, tunnel, policy watcher)"}
	c.RunE = func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#4/#5") }
	return c
}

package app

import "github.com/spf13/cobra"

func newRelayCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "relay", Short: "Run a relay"}
	c.RunE = func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#4") }
	return c
}

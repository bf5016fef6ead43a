package app

import "github.com/spf13/cobra"

func newDemoCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "demo", Short: "Run a whole demo consortium on loopback"}
	c.RunE = func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#4") }
	return c
}

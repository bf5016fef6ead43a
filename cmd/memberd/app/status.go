package app

import "github.com/spf13/cobra"

func newStatusCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "status", Short: "Show appliance status"}
	c.RunE = func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#4") }
	return c
}

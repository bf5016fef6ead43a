package app

import "github.com/spf13/cobra"

func newLedgerCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "ledger", Short: "Ledger: submit, fetch, height"}
	c.AddCommand(&cobra.Command{Use: "submit", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#5") }})
	c.AddCommand(&cobra.Command{Use: "fetch", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#5") }})
	c.AddCommand(&cobra.Command{Use: "height", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#5") }})
	return c
}

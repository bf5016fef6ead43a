package app

import "github.com/spf13/cobra"

func newCACmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "ca", Short: "Small member CA: init, sign"}
	c.AddCommand(&cobra.Command{Use: "init", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#2") }})
	c.AddCommand(&cobra.Command{Use: "sign", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#2") }})
	return c
}

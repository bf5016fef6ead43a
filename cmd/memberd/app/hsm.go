package app

import "github.com/spf13/cobra"

func newHSMCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "hsm", Short: "HSM keys: list, keygen, csr, selftest"}
	c.AddCommand(&cobra.Command{Use: "list", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#2") }})
	c.AddCommand(&cobra.Command{Use: "keygen", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#2") }})
	c.AddCommand(&cobra.Command{Use: "csr", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#2") }})
	c.AddCommand(&cobra.Command{Use: "selftest", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#2") }})
	return c
}

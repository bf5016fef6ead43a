package app

import "github.com/spf13/cobra"

func newPolicyCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Governance policy: show, verify, sign, diff, push"}
	c.AddCommand(&cobra.Command{Use: "show", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#3") }})
	c.AddCommand(&cobra.Command{Use: "verify", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#3") }})
	c.AddCommand(&cobra.Command{Use: "sign", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#3") }})
	c.AddCommand(&cobra.Command{Use: "diff", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#3") }})
	c.AddCommand(&cobra.Command{Use: "push", RunE: func(cmd *cobra.Command, args []string) error { return notBuilt(cmd.CommandPath(), "#3") }})
	return c
}

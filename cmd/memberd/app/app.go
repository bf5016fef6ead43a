// Package app wires memberd's packages into the memberd command line. It is
// the only place that knows about flags, config files, sockets and exit codes;
// library packages never import it.
//
// Exit codes (the user-facing contract in docs and ARCHITECTURE.md):
// 0 ok, 1 runtime failure, 2 usage or configuration error.
package app

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/usage"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitRuntime = 1
	ExitUsage   = 2
)

// UsageError marks an error caused by the command line or a config file; it
// makes memberd exit with code 2. The appliance and relay packages return it
// too (internal/usage).
type UsageError = usage.Error

// usagef returns a UsageError with a formatted message.
func usagef(format string, args ...any) error { return usage.Errorf(format, args...) }

// env is what every subcommand gets from Main: its streams and a logger.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

// Main runs memberd with the given arguments (without the program name) and
// returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr,
		log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "memberd: %v\n", err)
	var ue *UsageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitRuntime
}

func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "memberd",
		Short: "memberd: the consortium member appliance (ledger node, HSM identity, one-port tunnel, signed governance) and its relay",
		// Errors are printed once by Main, with the exit code chosen there.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	// Flag parsing errors and unknown commands are usage errors (exit 2).
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &UsageError{Err: fmt.Errorf("%s: %w (see '%s --help')", c.CommandPath(), err, c.CommandPath())}
	})
	root.AddCommand(
		newVersionCmd(e),
		newRunCmd(e),
		newRelayCmd(e),
		newDemoCmd(e),
		newStatusCmd(e),
		newPingCmd(e),
		newHSMCmd(e),
		newCACmd(e),
		newPolicyCmd(e),
		newLedgerCmd(e),
	)
	markUsageErrors(root)
	return root
}

// markUsageErrors walks the command tree so that every command-line mistake
// exits 2: argument-count errors become UsageErrors, and a command group
// called without a valid subcommand fails instead of printing help and
// exiting 0.
func markUsageErrors(c *cobra.Command) {
	if c.HasSubCommands() && c.RunE == nil && c.Run == nil {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("%s: unknown subcommand %q (see '%s --help')", cmd.CommandPath(), args[0], cmd.CommandPath())
			}
			return usagef("%s: a subcommand is required (see '%s --help')", cmd.CommandPath(), cmd.CommandPath())
		}
	} else if c.Args != nil {
		check := c.Args
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return &UsageError{Err: fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		markUsageErrors(sub)
	}
}

package app

import (
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/appliance"
)

func newRunCmd(e *env) *cobra.Command {
	var configPath, logFormat string
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the appliance (policy watcher, HSM identity, relay client, tunnel, admin endpoint)",
		Long: `Run the member appliance from memberd.yaml (see docs/appliance.md).

It loads the HSM identity folder, applies the signed policy from the policy
folder (live, on every new valid version), connects to every relay of the
policy (QUIC, else TLS over TCP, optionally through an HTTP CONNECT proxy),
brings up the WireGuard tunnel over them, serves policy pushes from other
members on the overlay push port, and the admin endpoint
(/metrics /healthz /readyz /status, POST /push, GET /ping).

SIGINT/SIGTERM stop it gracefully; SIGHUP re-reads the policy folder.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(e.stderr, logFormat)
			if err != nil {
				return err
			}
			cfg, err := appliance.LoadConfig(configPath)
			if err != nil {
				return err
			}
			a, err := appliance.New(*cfg, appliance.Deps{Logger: log})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			appliance.ApplyMemoryLimit(log, cfg)
			return a.Run(ctx)
		},
	}
	c.Flags().StringVar(&configPath, "config", "/etc/memberd/memberd.yaml", "appliance configuration file (YAML)")
	c.Flags().StringVar(&logFormat, "log-format", "auto", "log format: json, text, or auto (JSON unless stderr is a terminal)")
	return c
}

// newLogger makes the process logger: JSON when asked or when w is not a
// terminal (systemd, containers), text otherwise.
func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	switch format {
	case "json":
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	case "auto", "":
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				return slog.New(slog.NewTextHandler(w, nil)), nil
			}
		}
	default:
		return nil, usagef("--log-format: %q is not json, text or auto", format)
	}
	return slog.New(slog.NewJSONHandler(w, nil)), nil
}

package app

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/relayd"
)

func newRelayCmd(e *env) *cobra.Command {
	var configPath, logFormat string
	c := &cobra.Command{
		Use:   "relay",
		Short: "Run a relay: members dial out to it on one port (UDP QUIC + TCP TLS) and it forwards their encrypted packets",
		Long: `Run a relay. It listens on ONE port number for QUIC (UDP) and TLS over TCP,
admits only appliances whose certificate chains to a member CA of the policy,
forwards their (WireGuard-encrypted, opaque) packets where the policy's ACL
allows, and meshes with the other relays of the policy.

With policy_dir, the relay applies signed policy bundles from that folder,
and also learns new versions from the members attached to it: each member
offers the versions it applied, and the relay verifies them against its own
policy (admin signatures, version chain) before storing them there.

SIGINT/SIGTERM stop it; SIGHUP re-reads the policy folder (or the static
policy section of the config) and applies it live.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(e.stderr, logFormat)
			if err != nil {
				return err
			}
			cfg, err := relayd.LoadConfig(configPath)
			if err != nil {
				return err
			}
			r, err := newRelay(log, configPath, cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						r.Reload()
					}
				}
			}()
			return r.Run(ctx)
		},
	}
	c.Flags().StringVar(&configPath, "config", "/etc/memberd/relay.yaml", "relay configuration file (YAML)")
	c.Flags().StringVar(&logFormat, "log-format", "auto", "log format: json, text, or auto (JSON unless stderr is a terminal)")
	return c
}

// newRelay makes the relay daemon of cfg, read from configPath (which it
// re-reads on Reload for a static policy).
func newRelay(log *slog.Logger, configPath string, cfg *relayd.Config) (*relayd.Relay, error) {
	return relayd.New(*cfg, relayd.Deps{Logger: log, Source: configPath,
		LoadConfig: func() (*relayd.Config, error) { return relayd.LoadConfig(configPath) }})
}

package app

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/demostory"
)

// runDemoStory is 'memberd demo --ci': the whole story (internal/demostory)
// with real processes of this very binary, every step verified; an error
// when any step failed.
func runDemoStory(ctx context.Context, e *env, cmd *cobra.Command, dir string) error {
	for _, f := range []string{"members", "relays", "hsm", "check", "duration"} {
		if cmd.Flags().Changed(f) {
			return usagef("--ci tells the story of 2 relays and 3 SoftHSM2 members, unattended: --%s does not apply to it", f)
		}
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo --ci: finding the memberd binary to run: %w", err)
	}
	_, err = demostory.Run(ctx, demostory.Options{Bin: bin, Dir: dir, Out: e.stdout})
	return err
}

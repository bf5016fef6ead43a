package app

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

func newPolicyLogCmd(e *env) *cobra.Command {
	var stateDir string
	var blocks []string
	c := &cobra.Command{Use: "log --state DIR [--config-block FILE]...",
		Short: "List the policy versions an appliance applied, with who signed each",
		Long: `List the policy versions applied by the appliance whose state folder is DIR
(memberd.yaml policy.state_dir), oldest first: version, hash, when it was applied
here, what changed from the version before, the admins whose votes the bundle
carries (#sig) and the admins who signed its channel config update (#cfgsig,
ledger.config_blocks). The state folder keeps every applied version under
history/ (at most 1000) since the appliance that writes it started. Each
--config-block (a CONFIG block, e.g. from 'peer channel fetch config' on any
stock peer, or 'peer channel fetch N') is matched to the version whose
channel signatures it carries, and its number shown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stateDir == "" {
				return usagef("%s: --state (the appliance's policy.state_dir) is required", cmd.CommandPath())
			}
			hist, bad, err := policy.LoadHistory(stateDir)
			if err != nil {
				return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
			}
			cur, err := policy.LoadState(stateDir)
			if err != nil {
				return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
			}
			if cur == nil {
				return usagef("%s: --state %s holds no applied policy", cmd.CommandPath(), stateDir)
			}
			if len(hist) == 0 || hist[len(hist)-1].Policy.Hash() != cur.Hash() {
				// A state folder from before the history: the version in
				// force at least.
				hist = append(hist, policy.Applied{Policy: cur})
			}
			cfgBlocks := map[policy.Hash]uint64{}
			for _, path := range blocks {
				b, err := loadBlockFile(cmd, "--config-block", path)
				if err != nil {
					return err
				}
				if !channelconfig.IsConfigBlock(b) {
					return usagef("%s: --config-block %s: block %d is not a CONFIG block", cmd.CommandPath(), path, b.GetHeader().GetNumber())
				}
				found := false
				for _, a := range hist {
					var raws [][]byte
					for _, s := range a.Policy.ConfigSignatures() {
						raws = append(raws, s.Raw)
					}
					if channelconfig.CarriesSignature(b, raws) {
						cfgBlocks[a.Policy.Hash()], found = b.GetHeader().GetNumber(), true
						break
					}
				}
				if !found {
					fmt.Fprintf(e.stderr, "config block %d (%s) carries the channel signatures of no version in the history\n", b.GetHeader().GetNumber(), path)
				}
			}
			printPolicyLog(e.stdout, hist, cur, cfgBlocks)
			for _, err := range bad {
				fmt.Fprintf(e.stderr, "skipped: %v\n", err)
			}
			return nil
		}}
	c.Flags().StringVar(&stateDir, "state", "", "state folder of an appliance (policy.state_dir)")
	c.Flags().StringArrayVar(&blocks, "config-block", nil, "a CONFIG block of the channel, to show which version it was ordered for (repeatable)")
	return c
}

// printPolicyLog writes one row per version, marking the one in force,
// with the number of its CONFIG block when cfgBlocks has it.
func printPolicyLog(w io.Writer, hist []policy.Applied, cur *policy.Policy, cfgBlocks map[policy.Hash]uint64) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tHASH\tAPPLIED\tCHANGES\tSIGNED (POLICY)\tSIGNED (CHANNEL)\tCONFIG BLOCK")
	var prev *policy.Policy
	for _, a := range hist {
		p := a.Policy
		v := fmt.Sprint(p.Version())
		if p.Hash() == cur.Hash() {
			v += " *"
		}
		at := "-"
		if !a.At.IsZero() {
			at = a.At.UTC().Format(time.RFC3339)
		}
		changes := "genesis"
		if prev != nil && prev.Version()+1 == p.Version() {
			changes = changeKinds(policy.Compare(prev, p))
		} else if prev != nil || p.Version() != 1 {
			changes = "?" // the version before is not in the history
		}
		var sigs, cfg []string
		for _, s := range p.Signatures() {
			sigs = append(sigs, s.Member+"/"+s.KeyID)
		}
		for _, s := range p.ConfigSignatures() {
			cfg = append(cfg, s.Member+"/"+s.KeyID)
		}
		blk := "-"
		if n, ok := cfgBlocks[p.Hash()]; ok {
			blk = fmt.Sprint(n)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v, p.Hash().String()[:len("sha256:")+16], at, changes, orDash(sigs), orDash(cfg), blk)
		prev = p
	}
	tw.Flush()
}

func changeKinds(d *policy.Diff) string {
	if len(d.Kinds) == 0 {
		return "none"
	}
	ks := make([]string, len(d.Kinds))
	for i, k := range d.Kinds {
		ks[i] = string(k)
	}
	return strings.Join(ks, ",")
}

func orDash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

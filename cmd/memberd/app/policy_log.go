package app

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
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
channel signatures it carries, and its number shown. When a version lists
several channels (ledger.channels), a CHANNELS column lists each version's
channels (+ added, - dropped since the version before) and a CONFIG block is
shown as CHANNEL:NUMBER, so blocks of different channels stay apart.`,
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
			cfgBlocks := map[policy.Hash][]configBlockRef{}
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
						ref := configBlockRef{channel: channelOfBlock(b), number: b.GetHeader().GetNumber()}
						cfgBlocks[a.Policy.Hash()], found = append(cfgBlocks[a.Policy.Hash()], ref), true
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

// configBlockRef is a CONFIG block given to 'policy log': its channel and
// number.
type configBlockRef struct {
	channel string
	number  uint64
}

// channelOfBlock is the channel of a config block ("" if unreadable).
func channelOfBlock(b *common.Block) string {
	ch, _, err := channelconfig.BlockConfig(b)
	if err != nil {
		return ""
	}
	return ch
}

// printPolicyLog writes one row per version, marking the one in force,
// with the number of its CONFIG blocks when cfgBlocks has them. When a
// version lists several channels, each row also says which channels the
// version lists and each CONFIG block which channel it is of.
func printPolicyLog(w io.Writer, hist []policy.Applied, cur *policy.Policy, cfgBlocks map[policy.Hash][]configBlockRef) {
	multi := slices.ContainsFunc(hist, func(a policy.Applied) bool { return len(a.Policy.Ledger().Channels) > 0 })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if multi {
		fmt.Fprintln(tw, "VERSION\tHASH\tAPPLIED\tCHANGES\tCHANNELS\tSIGNED (POLICY)\tSIGNED (CHANNEL)\tCONFIG BLOCK")
	} else {
		fmt.Fprintln(tw, "VERSION\tHASH\tAPPLIED\tCHANGES\tSIGNED (POLICY)\tSIGNED (CHANNEL)\tCONFIG BLOCK")
	}
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
		var blks []string
		for _, r := range cfgBlocks[p.Hash()] {
			if multi {
				blks = append(blks, fmt.Sprintf("%s:%d", r.channel, r.number))
			} else {
				blks = append(blks, fmt.Sprint(r.number))
			}
		}
		hash := p.Hash().String()[:len("sha256:")+16]
		if multi {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v, hash, at, changes, logChannels(prev, p), orDash(sigs), orDash(cfg), orDash(blks))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v, hash, at, changes, orDash(sigs), orDash(cfg), orDash(blks))
		}
		prev = p
	}
	tw.Flush()
}

// logChannels lists p's channels, those prev lacks marked +, then those
// prev listed and p drops, marked -.
func logChannels(prev, p *policy.Policy) string {
	var out []string
	for _, name := range p.Channels() {
		if prev != nil && !slices.Contains(prev.Channels(), name) {
			name = "+" + name
		}
		out = append(out, name)
	}
	if prev != nil {
		for _, name := range prev.Channels() {
			if !slices.Contains(p.Channels(), name) {
				out = append(out, "-"+name)
			}
		}
	}
	return strings.Join(out, ",")
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

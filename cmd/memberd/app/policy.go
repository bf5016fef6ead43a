package app

import (
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/spf13/cobra"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

func newPolicyCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Governance policy: show, verify, sign, diff, push, log",
		Long: `Governance policy bundles: a YAML document plus admin signatures (see docs/policy.md).

Workflow: propose vN.yaml (version = current+1, previous = hash of the current
document: 'memberd policy show' prints it), each admin signs it with their HSM key
('memberd policy sign --key pkcs11:...'), anyone checks it ('memberd policy verify
--current vN-1.yaml vN.yaml'), then drop it into every appliance's policy folder.`}
	c.AddCommand(newPolicyShowCmd(e), newPolicyVerifyCmd(e), newPolicySignCmd(e), newPolicyDiffCmd(e))
	c.AddCommand(newPolicyPushCmd(e), newPolicyLogCmd(e))
	return c
}

// loadPolicyFile reads and parses a bundle file; a file that does not parse
// is a usage/config error (exit 2) naming the file.
func loadPolicyFile(cmd *cobra.Command, path string) (*policy.Policy, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), policy.MaxBundleSize+1))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reading policy %s: %w", cmd.CommandPath(), path, err)
	}
	p, err := policy.Parse(data)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("%s: policy file %s: %w", cmd.CommandPath(), path, err)}
	}
	return p, nil
}

func newPolicyShowCmd(e *env) *cobra.Command {
	return &cobra.Command{Use: "show FILE", Short: "Print a human summary of a policy bundle (version, hash, members, relays, ACL, ledger, rules, signatures)",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := loadPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			showPolicy(e.stdout, p)
			return nil
		}}
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s: want %d argument(s), got %d (see '%s --help')", cmd.CommandPath(), n, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func showPolicy(w io.Writer, p *policy.Policy) {
	d := p.Document()
	fmt.Fprintf(w, "policy of consortium %s, version %d\n", d.Consortium, d.Version)
	fmt.Fprintf(w, "  hash:     %s\n", p.Hash())
	if d.Version > 1 {
		fmt.Fprintf(w, "  previous: %s\n", p.Previous())
	} else {
		fmt.Fprintf(w, "  genesis:  pin this hash at install time\n")
	}
	if d.Description != "" {
		fmt.Fprintf(w, "  description: %s\n", strings.TrimSpace(d.Description))
	}
	if d.OverlayPrefix != "" {
		fmt.Fprintf(w, "  overlay:  %s\n", d.OverlayPrefix)
	}
	fmt.Fprintf(w, "members (%d):\n", len(d.Members))
	for _, m := range d.Members {
		roles := make([]string, len(m.Roles))
		for i, r := range m.Roles {
			roles[i] = string(r)
		}
		admins := make([]string, len(m.Admins))
		for i, a := range m.Admins {
			admins[i] = a.KeyID
			if !a.Expires.IsZero() {
				admins[i] += " (until " + a.Expires.UTC().Format(time.RFC3339) + ")"
			}
		}
		crls := ""
		for _, crl := range m.CRL {
			crls += fmt.Sprintf(" crl(%s)=%d revoked", crl.CA.Subject.CommonName, len(crl.List.RevokedCertificateEntries))
		}
		fmt.Fprintf(w, "  %-12s %q msp=%s overlay=%s roles=%s CAs=%d admins=%s%s\n", m.ID, m.Name, m.MSPID, m.Addr,
			strings.Join(roles, ","), len(m.CA), strings.Join(admins, ","), crls)
	}
	fmt.Fprintf(w, "relays (%d):\n", len(d.Relays))
	for _, r := range d.Relays {
		auth := ""
		if r.SPKISHA256 != "" {
			auth = " spki_sha256=" + r.SPKISHA256
		}
		if len(r.CA) > 0 {
			auth += fmt.Sprintf(" CAs=%d", len(r.CA))
		}
		fmt.Fprintf(w, "  %-12s %s%s\n", r.ID, r.Address, auth)
	}
	fmt.Fprintf(w, "acl (%d rules, everything else denied):\n", len(d.ACL))
	for _, r := range d.ACL {
		ports := make([]string, len(r.Ports))
		for i, x := range r.Ports {
			ports[i] = x.String()
		}
		fmt.Fprintf(w, "  %s -> %s ports %s\n", strings.Join(r.From, ","), strings.Join(r.To, ","), strings.Join(ports, ","))
	}
	l := d.Ledger
	if len(l.Channels) == 0 {
		fmt.Fprintf(w, "ledger: channel %s, blocks of at most %d messages / %d bytes (cut at %d), timeout %s, consenters %s\n",
			l.Channel, l.BatchSize.MaxMessageCount, l.BatchSize.AbsoluteMaxBytes, l.BatchSize.PreferredMaxBytes, l.Timeout, strings.Join(l.Consenters, ","))
	} else {
		fmt.Fprintf(w, "ledger: %d channels, nodes on %s\n", len(l.Channels), strings.Join(l.Consenters, ","))
		for _, name := range p.Channels() {
			v, err := p.ForChannel(name)
			if err != nil {
				continue // names come from Channels
			}
			vl, members := v.Ledger(), []string{}
			for _, m := range v.Members() {
				members = append(members, m.ID)
			}
			fmt.Fprintf(w, "  channel %s: consenters %s, members %s, blocks of at most %d messages / %d bytes (cut at %d), timeout %s\n",
				name, strings.Join(vl.Consenters, ","), strings.Join(members, ","), vl.BatchSize.MaxMessageCount,
				vl.BatchSize.AbsoluteMaxBytes, vl.BatchSize.PreferredMaxBytes, vl.Timeout)
		}
	}
	fmt.Fprintf(w, "revocations: %d certificate(s), %d admin key(s)\n", len(d.Revocations.Certificates), len(d.Revocations.AdminKeys))
	rules := []string{"default " + d.Amendment.Default.String()}
	for _, k := range policy.AllKinds {
		if t, ok := d.Amendment.Rules[k]; ok {
			rules = append(rules, string(k)+" "+t.String())
		}
	}
	fmt.Fprintf(w, "amendment: %s (of %d members)\n", strings.Join(rules, "; "), len(d.Members))
	sigs := p.Signatures()
	names := make([]string, len(sigs))
	for i, s := range sigs {
		names[i] = s.Member + "/" + s.KeyID
	}
	fmt.Fprintf(w, "signatures (%d, not verified here: use 'memberd policy verify'): %s\n", len(sigs), strings.Join(names, ", "))
}

func newPolicyVerifyCmd(e *env) *cobra.Command {
	var current, genesis, stateDir, configBlock string
	c := &cobra.Command{Use: "verify [--current FILE | --state DIR | --genesis HASH] [--config-block FILE] FILE...",
		Short: "Verify bundles: each must follow the one before it (votes, missing votes, change kinds)",
		Long: `Verify one or more bundles in order. The first is checked against the current
policy given by --current (a bundle file), --state (an appliance's state folder) or
--genesis (the pinned hash, when the first FILE is version 1); each next FILE is
checked against the one before it (catch-up chain). Without any of these flags, the
files are only parsed and validated. With --config-block (the channel's last config
block), the first FILE's Fabric half is checked too: the ConfigUpdate it derives from
that config and whether its admins' signatures (#cfgsig) meet the channel's policies,
as a stock peer checks them. Exit 1 when a bundle is refused.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s: at least one policy FILE is required", cmd.CommandPath())
			}
			cur, pin, err := verifyStart(cmd, current, stateDir, genesis)
			if err != nil {
				return err
			}
			for i, path := range args {
				p, err := loadPolicyFile(cmd, path)
				if err != nil {
					return err
				}
				if i == 0 && configBlock != "" {
					if err := verifyConfigUpdate(cmd, e.stdout, path, p, configBlock); err != nil {
						return err
					}
				}
				switch {
				case cur == nil && genesis != "" && i == 0:
					if _, err := policy.VerifyGenesis(p, pin); err != nil {
						fmt.Fprintf(e.stdout, "%s: version %d REFUSED: %v\n", path, p.Version(), err)
						return fmt.Errorf("%s: %s refused", cmd.CommandPath(), path)
					}
					fmt.Fprintf(e.stdout, "%s: version 1 OK: matches the pinned genesis hash %s\n", path, pin)
				case cur == nil:
					fmt.Fprintf(e.stdout, "%s: version %d is well-formed (%s); signatures not checked: give --current, --state or --genesis\n", path, p.Version(), p.Hash())
				default:
					r := policy.Check(cur, p, time.Now())
					printReport(e.stdout, path, r)
					if r.Err != nil {
						return fmt.Errorf("%s: %s refused (%d bundle(s) checked)", cmd.CommandPath(), path, i+1)
					}
				}
				cur = p
			}
			return nil
		}}
	c.Flags().StringVar(&current, "current", "", "bundle file of the policy in force (the first FILE must follow it)")
	c.Flags().StringVar(&stateDir, "state", "", "state folder of an appliance; its applied policy is the one in force")
	c.Flags().StringVar(&genesis, "genesis", "", "pinned genesis hash (sha256:...) when the first FILE is version 1")
	c.Flags().StringVar(&configBlock, "config-block", "", "the channel's last config block: also check the first FILE's channel update and its admin signatures")
	return c
}

// verifyStart is what 'policy verify' checks its first FILE against: the
// policy of --current or --state, or the pinned hash of --genesis (at most
// one of them; none: the files are only parsed).
func verifyStart(cmd *cobra.Command, current, stateDir, genesis string) (cur *policy.Policy, pin policy.Hash, err error) {
	set := 0
	for _, s := range []string{current, genesis, stateDir} {
		if s != "" {
			set++
		}
	}
	if set > 1 {
		return nil, pin, usagef("%s: give only one of --current, --state and --genesis", cmd.CommandPath())
	}
	switch {
	case current != "":
		if cur, err = loadPolicyFile(cmd, current); err != nil {
			return nil, pin, err
		}
	case stateDir != "":
		if cur, err = policy.LoadState(stateDir); err != nil {
			return nil, pin, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
		}
		if cur == nil {
			return nil, pin, usagef("%s: --state %s holds no applied policy", cmd.CommandPath(), stateDir)
		}
	}
	if genesis != "" {
		if pin, err = policy.ParseHash(genesis); err != nil {
			return nil, pin, usagef("%s: --genesis: %v", cmd.CommandPath(), err)
		}
	}
	return cur, pin, nil
}

// verifyConfigUpdate prints what p does to the channel of configBlock and
// fails when its admin signatures would not let a stock peer accept it.
func verifyConfigUpdate(cmd *cobra.Command, w io.Writer, path string, p *policy.Policy, configBlock string) error {
	b, err := loadBlockFile(cmd, "--config-block", configBlock)
	if err != nil {
		return err
	}
	vc, err := channelconfig.CheckPolicyVersion(b, p)
	if err != nil {
		return fmt.Errorf("%s: %s against --config-block %s: %w", cmd.CommandPath(), path, configBlock, err)
	}
	if vc.Update == nil {
		fmt.Fprintf(w, "%s: channel: no change to the channel config\n", path)
		return nil
	}
	status := "OK"
	if vc.Err != nil {
		status = "REFUSED"
	}
	fmt.Fprintf(w, "%s: channel %s: update to config sequence %d %s\n", path, vc.Update.ConfigUpdate.GetChannelId(), vc.Update.Config.GetSequence(), status)
	fmt.Fprintf(w, "  admin signatures: %d [%s]\n", len(vc.Signers), strings.Join(vc.Signers, ", "))
	for _, x := range vc.Invalid {
		fmt.Fprintf(w, "  rejected: %v\n", x)
	}
	if vc.Err != nil {
		fmt.Fprintf(w, "  error:    %v\n", vc.Err)
		return fmt.Errorf("%s: %s: its channel update would not validate", cmd.CommandPath(), path)
	}
	return nil
}

// loadBlockFile reads a marshalled common.Block named by flag.
func loadBlockFile(cmd *cobra.Command, flag, path string) (*common.Block, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("%s: %s: %v", cmd.CommandPath(), flag, err)
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		return nil, usagef("%s: %s %s: %v", cmd.CommandPath(), flag, path, err)
	}
	return b, nil
}

func printReport(w io.Writer, path string, r *policy.Report) {
	status := "OK"
	if r.Err != nil {
		status = "REFUSED"
	}
	fmt.Fprintf(w, "%s: version %d -> %d %s\n", path, r.From, r.To, status)
	if r.Diff == nil { // refused before counting votes
		fmt.Fprintf(w, "  error: %v\n", r.Err)
		return
	}
	kinds := make([]string, len(r.Diff.Kinds))
	for i, k := range r.Diff.Kinds {
		kinds[i] = string(k)
	}
	if len(kinds) == 0 {
		kinds = []string{"none"}
	}
	fmt.Fprintf(w, "  changes:  %s\n", strings.Join(kinds, ", "))
	fmt.Fprintf(w, "  rule:     %s -> %d of %d member votes needed", r.RuleString(), r.Needed, r.Members)
	if r.Removed > 0 {
		fmt.Fprintf(w, " (%d member(s) removed; their votes are not needed beyond a majority)", r.Removed)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  votes:    %d [%s]\n", len(r.Votes), strings.Join(r.Votes, ", "))
	fmt.Fprintf(w, "  missing:  %d [%s]\n", len(r.Missing), strings.Join(r.Missing, ", "))
	for _, x := range r.Rejected {
		fmt.Fprintf(w, "  rejected: %s\n", x)
	}
	if r.Err != nil {
		fmt.Fprintf(w, "  error:    %v\n", r.Err)
	}
}

func newPolicyDiffCmd(e *env) *cobra.Command {
	return &cobra.Command{Use: "diff OLD NEW", Short: "Show what NEW changes relative to OLD (members, admins, relays, ACL, ledger, consenters, revocations, rules)",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			old, err := loadPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			p, err := loadPolicyFile(cmd, args[1])
			if err != nil {
				return err
			}
			d := policy.Compare(old, p)
			fmt.Fprint(e.stdout, d.String())
			if !d.Empty() {
				need, kind, t := policy.RequiredVotes(old, d)
				k := string(kind)
				if k == "" {
					k = "default"
				}
				fmt.Fprintf(e.stdout, "needs %d of %d member votes (rule %s: %s)\n", need, len(old.Members()), k, t)
			}
			if p.Previous() != old.Hash() {
				fmt.Fprintf(e.stdout, "note: NEW names previous %s, not OLD's hash %s\n", p.Previous(), old.Hash())
			}
			return nil
		}}
}

func newPolicySignCmd(e *env) *cobra.Command {
	var kf keyFlags
	var member, keyID, current, out, configBlock, adminCert string
	c := &cobra.Command{Use: "sign --key URI [--member ID --key-id KID] [--current FILE] [--config-block FILE --admin-cert FILE] FILE",
		Short: "Add your admin signature to a bundle file (in place, atomically; --out to write elsewhere)",
		Long: `Sign the exact document bytes of FILE with an admin key held in an HSM and append the
signature line. The admin (member id and key id) is found by matching the key's public
key against the admins of --current (the policy in force, whose admins are the ones
that count) or else of FILE itself; --member and --key-id name it explicitly.

With --config-block (the channel's last config block, e.g. from 'peer channel fetch
config') and --admin-cert (your Fabric admin certificate for the same key: OU=admin,
issued by your member CA), also sign the channel ConfigUpdate that this version derives
from that config (a #cfgsig line): the CONFIG block the ledger orders for the version
carries it, so that stock Fabric peers accept the block (ledger.config_blocks).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := kf.check(cmd); err != nil {
				return err
			}
			if (member == "") != (keyID == "") {
				return usagef("%s: give both --member and --key-id, or neither", cmd.CommandPath())
			}
			path := args[0]
			p, err := loadPolicyFile(cmd, path)
			if err != nil {
				return err
			}
			var cur *policy.Policy
			if current != "" {
				if cur, err = loadPolicyFile(cmd, current); err != nil {
					return err
				}
			}
			s, err := hsm.OpenKey(kf.key, kf.options(e))
			if err != nil {
				return hsmError(cmd, err)
			}
			defer s.Close()
			ref, err := signingAdmin(cmd, s.Public(), policy.AdminRef{Member: member, KeyID: keyID}, kf.key, p, path, cur, current)
			if err != nil {
				return err
			}
			signed, err := p.Sign(s, ref)
			if err != nil {
				return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
			}
			if signed, err = signConfigUpdate(cmd, signed, s, ref, configBlock, adminCert); err != nil {
				return err
			}
			dst := path
			if out != "" {
				dst = out
			}
			if dst == "-" {
				_, err = e.stdout.Write(signed.Marshal())
				return err
			}
			if err := writeAtomic(dst, signed.Marshal()); err != nil {
				return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
			}
			fmt.Fprintf(e.stdout, "signed version %d (%s) as %s; %d signature(s) in %s\n", p.Version(), p.Hash(), ref, len(signed.Signatures()), dst)
			if cur != nil {
				printVotes(e.stdout, cur, signed, current)
			}
			return nil
		}}
	kf.register(c, "admin signing key", true)
	c.Flags().StringVar(&member, "member", "", "member id of the signing admin (default: found by public key)")
	c.Flags().StringVar(&keyID, "key-id", "", "key id of the signing admin (default: found by public key)")
	c.Flags().StringVar(&current, "current", "", "bundle file of the policy in force (to find the admin and show the votes so far)")
	c.Flags().StringVar(&out, "out", "", "write the signed bundle here instead of in place ('-' = stdout)")
	c.Flags().StringVar(&configBlock, "config-block", "", "the channel's last config block: also sign the ConfigUpdate this version derives from it")
	c.Flags().StringVar(&adminCert, "admin-cert", "", "PEM Fabric admin certificate (OU=admin) of the signing key, for --config-block")
	return c
}

// signingAdmin is the admin a signature with pub counts for: ref when
// --member and --key-id name it, else the admin of cur (the policy in force,
// from currentFile) or of p (from path) with that public key. With cur it
// must be an admin of cur, or the signature would not count.
func signingAdmin(cmd *cobra.Command, pub crypto.PublicKey, ref policy.AdminRef, key string, p *policy.Policy, path string, cur *policy.Policy, currentFile string) (policy.AdminRef, error) {
	if ref.Member == "" {
		var ok bool
		if cur != nil {
			ref, ok = cur.AdminFor(pub)
		}
		if !ok {
			ref, ok = p.AdminFor(pub)
		}
		if !ok {
			return ref, usagef("%s: the key %s is not an admin key listed in %s; name the admin with --member and --key-id", cmd.CommandPath(), key, strings.Join(nonEmpty(currentFile, path), " or "))
		}
	}
	if cur != nil {
		if a := cur.Admin(ref); a == nil {
			return ref, usagef("%s: %s is not an admin of the policy in force (%s): the signature would not count", cmd.CommandPath(), ref, currentFile)
		}
	}
	return ref, nil
}

// printVotes says how far signed is from following cur (from currentFile).
func printVotes(w io.Writer, cur, signed *policy.Policy, currentFile string) {
	r := policy.Check(cur, signed, time.Now())
	if r.Diff != nil {
		fmt.Fprintf(w, "votes so far: %d of %d needed (rule %s); missing: %s\n", len(r.Votes), r.Needed, r.RuleString(), strings.Join(r.Missing, ", "))
	} else {
		fmt.Fprintf(w, "warning: this bundle cannot follow %s: %v\n", currentFile, r.Err)
	}
}

// signConfigUpdate adds ref's #cfgsig line for configBlock (none when
// configBlock is "").
func signConfigUpdate(cmd *cobra.Command, p *policy.Policy, s crypto.Signer, ref policy.AdminRef, configBlock, adminCert string) (*policy.Policy, error) {
	if (configBlock == "") != (adminCert == "") {
		return nil, usagef("%s: give both --config-block and --admin-cert, or neither", cmd.CommandPath())
	}
	if configBlock == "" {
		return p, nil
	}
	b, err := loadBlockFile(cmd, "--config-block", configBlock)
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(adminCert)
	if err != nil {
		return nil, usagef("%s: --admin-cert: %v", cmd.CommandPath(), err)
	}
	m := p.Member(ref.Member)
	if m == nil {
		return nil, usagef("%s: member %s is not in version %d of the bundle", cmd.CommandPath(), ref.Member, p.Version())
	}
	sig, err := channelconfig.SignPolicyVersion(b, p, s, m.MSPID, certPEM, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("%s: signing the channel ConfigUpdate of version %d against %s: %w", cmd.CommandPath(), p.Version(), configBlock, err)
	}
	return p.WithConfigSignature(policy.ConfigSignature{Member: ref.Member, KeyID: ref.KeyID, Raw: sig}), nil
}

func nonEmpty(xs ...string) []string {
	var out []string
	for _, x := range xs {
		if x != "" {
			out = append(out, x)
		}
	}
	return out
}

// writeAtomic replaces path with data: temp file in the same folder, fsync,
// rename. The policy watcher never sees a half-written bundle.
func writeAtomic(path string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return err
}

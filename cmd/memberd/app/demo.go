package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/policy"
)

func newDemoCmd(e *env) *cobra.Command {
	var o demo.Options
	var check, ci bool
	var duration time.Duration
	var logFormat string
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole demo consortium on loopback, in the foreground",
		Long: `Run a whole consortium on loopback in this process: relays and member
appliances exactly as 'memberd relay' and 'memberd run' run them, from the
files 'memberd demo init' writes (into --dir, or a new temporary folder).

It then proves that every member reaches every other member through the
tunnel (an echo on overlay port 7059), prints the relay path (quic/tcp) and
the round-trip time of each pair, and stays up until Ctrl-C. With --check it
exits 0 as soon as every check passed (1 if one failed); --duration stops it
after that long. The admin endpoint of each member serves /status
('memberd status --admin ADDR').

With --ci it tells the whole story instead, unattended, with real
'memberd relay' and 'memberd run' processes (logs in the demo folder):
the consortium up, transactions ordered, a governance change, a relay
killed under traffic, an identity key rotated; exit 0 only if every step
was verified.

The keys of the demo are for the demo only: CA and admin keys are files,
and so are the identity keys with --hsm soft.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(e.stderr, logFormat)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if ci {
				return runDemoStory(ctx, e, cmd, o.Dir)
			}
			return runDemo(ctx, e, log, o, check, duration)
		},
	}
	c.Flags().IntVar(&o.Members, "members", 3, "number of members")
	c.Flags().IntVar(&o.Relays, "relays", 2, "number of relays")
	c.Flags().StringVar(&o.Dir, "dir", "", "demo folder: reused if 'memberd demo init' wrote it, else created (default: a new temporary folder)")
	c.Flags().StringVar(&o.HSM, "hsm", "softhsm", "identity keys: softhsm (SoftHSM2 tokens) or soft (INSECURE key files)")
	c.Flags().BoolVar(&check, "check", false, "exit after the checks (0 if all passed)")
	c.Flags().BoolVar(&ci, "ci", false, "tell the whole story unattended with real processes (relays, members, a policy change, a relay killed, a key rotated); exit 0 only if every step was verified")
	c.Flags().DurationVar(&duration, "duration", 0, "stop after this long (0 = until Ctrl-C)")
	c.Flags().StringVar(&logFormat, "log-format", "text", "log format: json, text, or auto")
	c.AddCommand(newDemoInitCmd(e))
	return c
}

func newDemoInitCmd(e *env) *cobra.Command {
	var o demo.Options
	var channels []string
	c := &cobra.Command{
		Use:   "init --members N --relays M --dir DIR [--relay-addr HOST:PORT ...] [--hsm softhsm|soft] [--channels NAME[=MEMBER+MEMBER...],...]",
		Short: "Write a demo consortium (tokens, CAs, identities, relay and member configs, signed policy v1); start nothing",
		Long: `Write a demo consortium and start nothing. With --channels, the policy lists
several channels (ledger.channels) instead of the one channel "demo", and each
member's memberd.yaml names one genesis block per channel in
ledger.genesis_blocks: NAME alone is a channel of every member, ordered by every
member; NAME=member-b+member-c is a channel of those members only, ordered by
them (docs/policy.md "Several channels").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.Channels, err = parseDemoChannels(channels); err != nil {
				return usagef("%s: --channels: %v", cmd.CommandPath(), err)
			}
			L, err := demo.Init(o)
			if err != nil {
				return err
			}
			printLayout(e, L)
			return nil
		},
	}
	c.Flags().IntVar(&o.Members, "members", 3, "number of members")
	c.Flags().IntVar(&o.Relays, "relays", 2, "number of relays")
	c.Flags().StringVar(&o.Dir, "dir", "", "folder to write (must be empty or missing)")
	c.Flags().StringSliceVar(&o.Relay, "relay-addr", nil, "relay address host:port, one per relay (default 127.0.0.1:<free port>)")
	c.Flags().StringVar(&o.HSM, "hsm", "softhsm", "identity keys: softhsm (SoftHSM2 tokens) or soft (INSECURE key files)")
	c.Flags().StringSliceVar(&channels, "channels", nil, "channels of the policy's ledger.channels instead of the one channel \"demo\": NAME (every member) or NAME=MEMBER+MEMBER... (those members, ordering it)")
	_ = c.MarkFlagRequired("dir")
	return c
}

// parseDemoChannels reads demo init's --channels: NAME, or
// NAME=MEMBER+MEMBER... (the channel's members and consenters). The
// policy's own validation checks the names and members.
func parseDemoChannels(specs []string) ([]*policy.Channel, error) {
	var out []*policy.Channel
	for _, spec := range specs {
		name, members, hasMembers := strings.Cut(spec, "=")
		if name == "" {
			return nil, fmt.Errorf("%q: want NAME or NAME=MEMBER+MEMBER", spec)
		}
		ch := &policy.Channel{Name: name}
		if hasMembers {
			for _, m := range strings.Split(members, "+") {
				if m == "" {
					return nil, fmt.Errorf("%q: an empty member id", spec)
				}
				ch.Members = append(ch.Members, m)
			}
			ch.Consenters = slices.Clone(ch.Members)
		}
		out = append(out, ch)
	}
	return out, nil
}

func printLayout(e *env, L *demo.Layout) {
	fmt.Fprintf(e.stdout, "demo consortium written to %s\n", L.Dir)
	fmt.Fprintf(e.stdout, "  policy v1 %s (signed by every member admin)\n", L.Genesis.Hash())
	if L.SoftHSMConf != "" {
		fmt.Fprintf(e.stdout, "  identity keys in SoftHSM2: export SOFTHSM2_CONF=%s\n", L.SoftHSMConf)
	} else {
		fmt.Fprintf(e.stdout, "  identity keys are INSECURE files (--hsm soft)\n")
	}
	for _, r := range L.Relays {
		fmt.Fprintf(e.stdout, "  memberd relay --config %s\n", L.RelayConfig[r])
	}
	for _, m := range L.Members {
		fmt.Fprintf(e.stdout, "  memberd run   --config %s\n", L.MemberConfig[m])
	}
	if lines := demoTryLines(L); len(lines) > 0 {
		fmt.Fprintf(e.stdout, "once they run, from %s:\n", L.Members[0])
		for _, l := range lines {
			fmt.Fprintf(e.stdout, "  %s\n", l)
		}
	}
}

// demoTryLines are ready-to-run commands against the first member of the
// demo: a ping through the tunnel to the second member, and a ledger
// submit signed by the first member's client identity (key in a file).
// Nil when the member config cannot be read (it was just written).
func demoTryLines(L *demo.Layout) []string {
	if len(L.Members) == 0 || L.Genesis == nil {
		return nil
	}
	a := L.Members[0]
	cfg, err := appliance.LoadConfig(L.MemberConfig[a])
	if err != nil {
		return nil
	}
	var lines []string
	if len(L.Members) > 1 {
		lines = append(lines, fmt.Sprintf("memberd ping --admin %s %s", cfg.Admin, L.Members[1]))
	}
	if m := L.Genesis.Member(a); cfg.Ledger != nil && m != nil {
		client := cfg.Path(filepath.Join("client", "msp"))
		// One line per channel the member may submit to (ledger.channel,
		// or each of ledger.channels whose members include it).
		for _, ch := range L.Genesis.Channels() {
			if v, err := L.Genesis.ForChannel(ch); err != nil || v.Member(a) == nil {
				continue
			}
			lines = append(lines, fmt.Sprintf("memberd ledger submit --orderer %s --channel %s --msp-id %s --cert %s --key file:%s --insecure-file-key --tls-ca %s --data 'hello'",
				cfg.Ledger.Listen, ch, m.MSPID,
				filepath.Join(client, "signcerts", "cert.pem"), filepath.Join(client, "keystore", "key.pem"), cfg.Path("ca.pem")))
		}
	}
	return lines
}

func runDemo(ctx context.Context, e *env, log *slog.Logger, o demo.Options, check bool, duration time.Duration) error {
	var L *demo.Layout
	var err error
	switch {
	case o.Dir == "":
		if o.Dir, err = os.MkdirTemp("", "memberd-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(o.Dir) // a temporary demo leaves nothing behind; use --dir to keep it
		L, err = demo.Init(o)
	default:
		if _, serr := os.Stat(filepath.Join(o.Dir, demo.LayoutFile)); serr == nil {
			L, err = demo.LoadLayout(o.Dir)
		} else {
			L, err = demo.Init(o)
		}
	}
	if err != nil {
		return err
	}
	if L.SoftHSMConf != "" {
		// The command owns this process, whose members' PKCS#11 module
		// reads its token folder from the environment (not demo.Init's
		// nor demo.LoadLayout's business, being library functions).
		os.Setenv("SOFTHSM2_CONF", L.SoftHSMConf)
	}
	printLayout(e, L)
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	d, err := demo.Start(ctx, L, &demo.RunOptions{Logger: log})
	if err != nil {
		return err
	}
	defer d.Stop()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err = d.WaitConnected(wctx)
	wcancel()
	if err != nil {
		return err
	}
	if err := d.ServeEcho(ctx, demo.EchoPort); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\n%d relays and %d members up; echo through the tunnel, member to member:\n", len(L.Relays), len(L.Members))
	failed := 0
	for _, c := range d.CheckAll(ctx, demo.EchoPort) {
		if c.Err != nil {
			failed++
			fmt.Fprintf(e.stdout, "  %-10s → %-10s FAILED: %v\n", c.From, c.To, c.Err)
			continue
		}
		fmt.Fprintf(e.stdout, "  %-10s → %-10s ok  via %-8s (%s)  rtt %v\n", c.From, c.To, c.Relay, c.Path, c.RTT.Round(time.Microsecond))
	}
	if err := demoLedgerCheck(ctx, e, d); err != nil {
		failed++
		fmt.Fprintf(e.stdout, "  ledger FAILED: %v\n", err)
	}
	for _, m := range L.Members {
		fmt.Fprintf(e.stdout, "  %s: admin http://%s/status  (memberd status --admin %s), ledger gRPC %s\n", m, d.AdminAddr(m), d.AdminAddr(m), d.LedgerAddr(m))
	}
	if failed > 0 {
		return fmt.Errorf("demo: %d checks failed", failed)
	}
	if check {
		fmt.Fprintln(e.stdout, "all checks passed")
		return nil
	}
	fmt.Fprintln(e.stdout, "all checks passed; running until Ctrl-C")
	<-ctx.Done()
	return nil
}

// demoLedgerCheck is the ledger part of 'memberd demo': submit to the first
// member, fetch and verify from every member, print the height.
func demoLedgerCheck(ctx context.Context, e *env, d *demo.Consortium) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	from := d.Layout.Members[0]
	h, err := d.CheckLedger(ctx, from, demoLedgerTxs)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "  ledger: %d envelopes submitted to %s; blocks 0..%d fetched, verified and identical on all %d members (height %d)\n",
		demoLedgerTxs, from, h-1, len(d.Layout.Members), h)
	return nil
}

// demoLedgerTxs is how many envelopes 'memberd demo' submits.
const demoLedgerTxs = 5

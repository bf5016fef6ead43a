package app

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/policy"
)

func newLedgerCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "ledger", Short: "Ledger: channel create, submit, fetch, height, transfer-leader, verify",
		Long: `Work with the consortium's ledger through a node's Fabric AtomicBroadcast API
(the same API Fabric SDKs and peers use). submit, fetch and height sign their
requests with a member identity: --key (HSM key URI) --cert (its certificate)
--msp-id (the member's MSP id). transfer-leader asks the local appliance
(its admin endpoint) to hand the channel's raft leadership to a consenter.
verify checks a stopped member's whole stored chain (a start checks only its
tail).`}
	c.AddCommand(newLedgerChannelCmd(e), newLedgerSubmitCmd(e), newLedgerFetchCmd(e), newLedgerHeightCmd(e),
		newLedgerTransferLeaderCmd(e), newLedgerVerifyCmd(e))
	return c
}

func newLedgerChannelCmd(e *env) *cobra.Command {
	c := &cobra.Command{Use: "channel", Short: "Channel configuration"}
	var polFile, out, channel string
	var consenters []string
	create := &cobra.Command{
		Use:   "create --policy FILE [--channel NAME] --consenter MEMBER=TLSCERT.pem[@HOST:PORT] ... --out genesis.block",
		Short: "Build the channel's genesis (config) block from the policy",
		Long: `Build a Fabric channel config block from the consortium policy: one MSP per
member with its CA certificates, Readers/Writers/Admins policies, the orderer
section with one etcdraft consenter per consenter member, BatchSize and
BatchTimeout from the policy's ledger section, capabilities V2_0/V2_5. Every
consenter member needs --consenter with its node's TLS certificate (the policy
pins CAs, not node certificates); the consenter (raft) endpoint defaults to
the member's overlay address and port 7050. The client-facing orderer
endpoints that Fabric peers dial are the policy's members[].ledger_endpoints
(the consenter address when a member gives none). Every node of the channel
starts from this block, byte for byte, and Fabric peers join the channel
with it: build it once and copy it to every member.

A policy with ledger.channels needs --channel: the block is that channel's,
with the channel's member orgs, consenters and batch parameters; build one
per channel and list them in memberd.yaml ledger.genesis_blocks.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if polFile == "" || out == "" {
				return usagef("%s: --policy and --out are required", cmd.CommandPath())
			}
			raw, err := os.ReadFile(polFile)
			if err != nil {
				return usagef("%s: --policy: %v", cmd.CommandPath(), err)
			}
			pol, err := policy.Parse(raw)
			if err != nil {
				return usagef("%s: --policy %s: %v", cmd.CommandPath(), polFile, err)
			}
			if channel == "" && len(pol.Ledger().Channels) > 0 {
				return usagef("%s: --policy %s lists ledger.channels (%s): say which with --channel", cmd.CommandPath(), polFile, strings.Join(pol.Channels(), ", "))
			}
			// --consenter may name any member of the policy, so that one
			// list of them builds every channel's block.
			css, err := parseConsenters(cmd, consenters, pol, polFile)
			if err != nil {
				return err
			}
			if channel != "" {
				if pol, err = pol.ForChannel(channel); err != nil {
					return usagef("%s: --channel: %v", cmd.CommandPath(), err)
				}
			}
			cc, err := orderer.ChannelConfig(pol, css)
			if err != nil {
				return usagef("%s: %v (pass --consenter for every consenter member: %s)", cmd.CommandPath(), err, appliance.ConsenterIDs(pol))
			}
			b, err := channelconfig.GenesisBlock(cc, time.Now(), rand.Reader)
			if err != nil {
				return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
			}
			raw, err = block.Marshal(b)
			if err != nil {
				return err
			}
			if err := writeOut(e, out, raw, 0o644); err != nil {
				return fmt.Errorf("%s: writing %s: %w", cmd.CommandPath(), out, err)
			}
			fmt.Fprintf(e.stderr, "channel %q: genesis block with %d member orgs and %d consenters written to %s\n",
				cc.ChannelID, len(cc.ApplicationOrgs), len(cc.Consenters), out)
			if ids := orderer.MissingLedgerEndpoints(pol); len(ids) > 0 {
				fmt.Fprintf(e.stderr, "warning: members %s have no ledger_endpoints in the policy: their orderer endpoint is their overlay consenter address, which Fabric peers reach only with peer.deliveryclient.addressOverrides (docs/fabric-peers.md)\n",
					strings.Join(ids, ", "))
			}
			return nil
		},
	}
	create.Flags().StringVar(&polFile, "policy", "", "the consortium policy (signed bundle or document)")
	create.Flags().StringArrayVar(&consenters, "consenter", nil, "MEMBER=TLSCERT.pem[@HOST:PORT] for each consenter member (repeatable)")
	create.Flags().StringVar(&out, "out", "", "where to write the genesis block ('-' = stdout)")
	create.Flags().StringVar(&channel, "channel", "", "the channel of the policy's ledger.channels to build the block of (required with ledger.channels)")
	c.AddCommand(create)
	return c
}

// parseConsenters reads the --consenter MEMBER=TLSCERT.pem[@HOST:PORT]
// flags of 'ledger channel create'; every member must be in pol (from
// polFile).
func parseConsenters(cmd *cobra.Command, specs []string, pol *policy.Policy, polFile string) (map[string]channelconfig.Consenter, error) {
	css := map[string]channelconfig.Consenter{}
	for _, spec := range specs {
		id, rest, ok := strings.Cut(spec, "=")
		if !ok || id == "" || rest == "" {
			return nil, usagef("%s: --consenter %q: want MEMBER=TLSCERT.pem[@HOST:PORT]", cmd.CommandPath(), spec)
		}
		certFile, endpoint, _ := strings.Cut(rest, "@")
		pemBytes, err := os.ReadFile(certFile)
		if err != nil {
			return nil, usagef("%s: --consenter %s: %v", cmd.CommandPath(), id, err)
		}
		cs := channelconfig.Consenter{ClientTLSCert: pemBytes, ServerTLSCert: pemBytes}
		if endpoint != "" {
			host, port, err := splitPort(endpoint)
			if err != nil {
				return nil, usagef("%s: --consenter %s endpoint %q: %v", cmd.CommandPath(), id, endpoint, err)
			}
			cs.Host, cs.Port = host, port
		}
		if pol.Member(id) == nil {
			return nil, usagef("%s: --consenter %s: no such member in policy %s", cmd.CommandPath(), id, polFile)
		}
		css[id] = cs
	}
	return css, nil
}

func newLedgerSubmitCmd(e *env) *cobra.Command {
	var f ledgerFlags
	var data, dataFile string
	var raw bool
	c := &cobra.Command{
		Use:   "submit --orderer HOST:PORT --channel NAME --key URI --cert cert.pem --msp-id ID (--data TEXT | --data-file FILE) [--raw]",
		Short: "Sign an ENDORSER_TRANSACTION envelope and broadcast it; prints the status",
		Long: `Build an ENDORSER_TRANSACTION envelope carrying the data, sign it with the
identity, send it with Broadcast and print the answer. SUCCESS means the
envelope is in a block committed by the ordering service (durable on a
quorum of consenters). SERVICE_UNAVAILABLE (no leader now, or a leader
change that left the envelope maybe ordered) is not final: the same
envelope is sent again until --timeout, and if the service then refuses it
as a duplicate, the command finds it in the chain and answers SUCCESS with
its block. Exit 1 on any other status.

The envelope is what Fabric expects: a Payload with a channel header (type,
channel, tx id, timestamp), a signature header (creator, nonce) and a
marshalled peer.Transaction whose one action invokes chaincode
"memberd-data" with the data as its argument. No peer runs that chaincode:
Fabric peers commit the transaction flagged invalid (no endorsement), as
any unendorsed transaction, and configtxlator decodes the block. --raw puts
the data bytes themselves in the Payload instead (not a Fabric transaction).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (data == "") == (dataFile == "") {
				return usagef("%s: give exactly one of --data and --data-file", cmd.CommandPath())
			}
			payload := []byte(data)
			if dataFile != "" {
				var err error
				if payload, err = readFileOrStdin(e, dataFile); err != nil {
					return usagef("%s: --data-file: %v", cmd.CommandPath(), err)
				}
			}
			s, err := f.open(cmd, e)
			if err != nil {
				return err
			}
			defer s.close()
			build := orderer.NewEndorserTransaction
			if raw {
				build = orderer.NewTransaction
			}
			env, txid, err := build(s.id, f.channel, payload, time.Now())
			if err != nil {
				return fmt.Errorf("%s: signing: %w", cmd.CommandPath(), err)
			}
			ctx, cancel := context.WithTimeout(cmdContext(cmd), f.timeout)
			defer cancel()
			res, err := orderer.Submit(ctx, s.client, s.id, f.channel, env, txid)
			if err != nil {
				return s.connErr(cmd, err)
			}
			fmt.Fprintf(e.stdout, "%s %s\n", res.Status, txid)
			if res.Attempts > 1 {
				fmt.Fprintf(e.stderr, "sent %d times (SERVICE_UNAVAILABLE before): %s\n", res.Attempts, res.Info)
			}
			if res.Status != common.Status_SUCCESS {
				return fmt.Errorf("%s: %w %s: %s", cmd.CommandPath(), orderer.ErrStatus, res.Status, res.Info)
			}
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVar(&data, "data", "", "transaction data (text)")
	c.Flags().StringVar(&dataFile, "data-file", "", "transaction data from a file ('-' = stdin)")
	c.Flags().BoolVar(&raw, "raw", false, "put the data bytes themselves in the Payload, not a peer.Transaction (Fabric peers and configtxlator cannot read it)")
	return c
}

func newLedgerFetchCmd(e *env) *cobra.Command {
	var f ledgerFlags
	var from, to int64
	var out, polFile string
	c := &cobra.Command{
		Use:   "fetch --from N [--to M] --out DIR --orderer HOST:PORT --channel NAME --key URI --cert cert.pem --msp-id ID",
		Short: "Pull blocks N..M with Deliver, verify each, write DIR/<number>.block",
		Long: `Pull blocks with Deliver and verify every one before writing it: header
chain (number and previous hash, from block --from on), data hash, and the
orderer signatures (valid low-S ECDSA by the certificate in each signature;
with --policy also that the signer is a consenter member of the policy).
--to defaults to the newest block. Blocks are written as DIR/<number>.block
(a marshalled common.Block, as 'peer channel fetch' writes).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" || from < 0 {
				return usagef("%s: --out DIR and --from N (>= 0) are required", cmd.CommandPath())
			}
			var pol *policy.Policy
			if polFile != "" {
				raw, err := os.ReadFile(polFile)
				if err == nil {
					pol, err = policy.Parse(raw)
				}
				if err != nil {
					return usagef("%s: --policy %s: %v", cmd.CommandPath(), polFile, err)
				}
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
			}
			s, err := f.open(cmd, e)
			if err != nil {
				return err
			}
			defer s.close()
			stop := uint64(to)
			if to < 0 {
				h, err := height(cmdContext(cmd), s, f)
				if err != nil {
					return err
				}
				stop = h - 1
			}
			if stop < uint64(from) {
				return usagef("%s: --to %d is before --from %d", cmd.CommandPath(), stop, from)
			}
			ctx, cancel := context.WithTimeout(cmdContext(cmd), f.timeout)
			defer cancel()
			count, err := fetchInto(ctx, s, f.channel, uint64(from), stop, out, pol)
			if err != nil {
				return s.connErr(cmd, err)
			}
			fmt.Fprintf(e.stdout, "fetched and verified blocks %d..%d (%d) into %s\n", from, stop, count, out)
			return nil
		},
	}
	f.register(c)
	c.Flags().Int64Var(&from, "from", -1, "first block number")
	c.Flags().Int64Var(&to, "to", -1, "last block number (default: the newest)")
	c.Flags().StringVar(&out, "out", "", "directory for the blocks")
	c.Flags().StringVar(&polFile, "policy", "", "optional policy: also check each block's signer is a consenter member")
	return c
}

// fetchInto pulls blocks from..stop of channel with Deliver, verifies each
// (orderer.VerifyFetched) and writes it as out/<number>.block; it returns how many
// it wrote.
func fetchInto(ctx context.Context, s *ledgerSession, channel string, from, stop uint64, out string, pol *policy.Policy) (int, error) {
	var prev *common.Block
	count := 0
	err := orderer.Fetch(ctx, s.client, s.id, channel, orderer.SeekRange(from, stop, ab.SeekInfo_BLOCK_UNTIL_READY),
		func(b *common.Block) error {
			if err := orderer.VerifyFetched(b, prev, from+uint64(count), pol); err != nil {
				return err
			}
			raw, err := block.Marshal(b)
			if err != nil {
				return err
			}
			path := filepath.Join(out, fmt.Sprintf("%d.block", b.Header.Number))
			if err := os.WriteFile(path, raw, 0o644); err != nil {
				return err
			}
			prev = b
			count++
			return nil
		})
	return count, err
}

func newLedgerHeightCmd(e *env) *cobra.Command {
	var f ledgerFlags
	c := &cobra.Command{
		Use:   "height --orderer HOST:PORT --channel NAME --key URI --cert cert.pem --msp-id ID",
		Short: "Print the number of blocks of the channel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := f.open(cmd, e)
			if err != nil {
				return err
			}
			defer s.close()
			h, err := height(cmdContext(cmd), s, f)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, h)
			return nil
		},
	}
	f.register(c)
	return c
}

func height(ctx context.Context, s *ledgerSession, f ledgerFlags) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var h uint64
	err := orderer.Fetch(ctx, s.client, s.id, f.channel, orderer.SeekNewest(), func(b *common.Block) error {
		h = b.GetHeader().GetNumber() + 1
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("asking %s for the newest block of %q: %w", f.addr, f.channel, err)
	}
	return h, nil
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func readFileOrStdin(e *env, path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(e.stdin)
	}
	return os.ReadFile(path)
}

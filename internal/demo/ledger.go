package demo

// The demo's ledger: demo init writes the channel's genesis block (every
// member a consenter, each consenter's TLS certificate its appliance
// certificate) and a ledger section per member; 'memberd demo --check'
// submits envelopes to one member and fetches and verifies the blocks from
// every member.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/policy"
)

// LedgerGenesisFile is the genesis block in each member's folder.
const LedgerGenesisFile = "genesis.block"

// LedgerChannelGenesisFile is the genesis block of channel in each
// member's folder, with Options.Channels.
func LedgerChannelGenesisFile(channel string) string { return "genesis-" + channel + ".block" }

// defaultChannel is the channel the single-channel helpers use: the
// policy's first.
func (d *Consortium) defaultChannel() string { return d.Layout.Genesis.Channels()[0] }

// The demo's overlay ports of raft and of gRPC between consenters (inside
// the demo ACL's 7050-7059; 7050 and 7051 stay free for tests and services).
const (
	LedgerRaftPort = 7052
	LedgerPeerPort = 7053
)

// LedgerGenesis builds the demo channel's genesis block from the policy
// (orderer.ChannelConfig): certs gives each consenter member's appliance
// certificate, used as its consenter TLS certificate.
func LedgerGenesis(gen *policy.Policy, certs map[string]*x509.Certificate, now time.Time) ([]byte, error) {
	css := map[string]channelconfig.Consenter{}
	for id, c := range certs {
		pemBytes := hsm.EncodePEM("CERTIFICATE", c.Raw)
		css[id] = channelconfig.Consenter{ClientTLSCert: pemBytes, ServerTLSCert: pemBytes, Port: LedgerPeerPort}
	}
	cc, err := orderer.ChannelConfig(gen, css)
	if err != nil {
		return nil, fmt.Errorf("demo channel config: %w", err)
	}
	b, err := channelconfig.GenesisBlock(cc, now, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("demo genesis block: %w", err)
	}
	return block.Marshal(b)
}

// demoLedgerConfig is the ledger section demo init writes for a member.
func demoLedgerConfig(listen, admin string) map[string]any {
	return map[string]any{"listen": listen, "data_dir": "ledger", "genesis_block": LedgerGenesisFile,
		"raft_port": LedgerRaftPort, "peer_port": LedgerPeerPort,
		// osnadmin with a client certificate of the member CA carrying OU=admin
		"admin": map[string]any{"listen": admin, "client_ca": "ca.pem", "client_ou": appliance.DefaultLedgerAdminClientOU}}
}

// ParticipationAddr is the address of member's channel participation API
// (osnadmin; "" if none).
func (d *Consortium) ParticipationAddr(member string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a := d.appliances[member]; a != nil && a.HasLedger() {
		return a.LedgerAdminAddr()
	}
	return ""
}

// LedgerAddr is the LAN gRPC address of member's ledger node ("" if none).
func (d *Consortium) LedgerAddr(member string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a := d.appliances[member]; a != nil && a.HasLedger() {
		return a.LedgerAddr()
	}
	return ""
}

// ledgerClient connects to member's ledger gRPC as that member's appliance
// identity (TLS server checked against the member CAs of the policy).
func (d *Consortium) ledgerClient(member string) (ab.AtomicBroadcastClient, orderer.Identity, func(), error) {
	return d.ledgerClientAt(member, member)
}

// ledgerClientAt connects to member at's ledger gRPC as member as's
// appliance identity.
func (d *Consortium) ledgerClientAt(as, at string) (ab.AtomicBroadcastClient, orderer.Identity, func(), error) {
	d.mu.Lock()
	a, server := d.appliances[as], d.appliances[at]
	d.mu.Unlock()
	if a == nil || server == nil || !server.HasLedger() {
		return nil, orderer.Identity{}, nil, fmt.Errorf("demo: member %s or %s does not run, or %s runs no ledger", as, at, at)
	}
	p := a.Policy()
	roots := p.CAPool()
	id := a.Identity()
	ident := orderer.Identity{MSPID: p.Member(as).MSPID, Cert: id.Certificate, Signer: id.Signer}
	cert := orderer.TLSCertificate(ident, id.Chain...)
	conn, err := grpc.NewClient(server.LedgerAddr(), append(orderer.ClientOptions(),
		grpc.WithTransportCredentials(credentials.NewTLS(orderer.ClientTLS(&cert, roots))))...)
	if err != nil {
		return nil, ident, nil, err
	}
	return ab.NewAtomicBroadcastClient(conn), ident, func() { conn.Close() }, nil
}

// WaitLedger waits until every running member's ledger node knows a raft
// leader.
func (d *Consortium) WaitLedger(ctx context.Context) error {
	for {
		var notReady error
		d.mu.Lock()
		for id, a := range d.appliances {
			if !a.HasLedger() {
				notReady = fmt.Errorf("member %s runs no ledger", id)
				break
			}
			if err := a.LedgerReady(ctx); err != nil {
				notReady = fmt.Errorf("member %s: %w", id, err)
			}
		}
		d.mu.Unlock()
		if notReady == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo ledger not ready: %w", notReady)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// LedgerSubmit signs n ENDORSER_TRANSACTION envelopes as member's appliance
// identity and broadcasts them on one stream to member's ledger gRPC (as
// 'memberd ledger submit' does); every answer must be SUCCESS. It returns
// the tx ids.
func (d *Consortium) LedgerSubmit(ctx context.Context, member string, n int) ([]string, error) {
	return d.LedgerSubmitTo(ctx, member, d.defaultChannel(), n)
}

// LedgerSubmitTo is LedgerSubmit on channel.
func (d *Consortium) LedgerSubmitTo(ctx context.Context, member, channel string, n int) ([]string, error) {
	return d.LedgerSubmitAs(ctx, member, member, channel, n)
}

// LedgerSubmitAs is LedgerSubmit on channel at member at's ledger, signed
// by member as's appliance identity.
func (d *Consortium) LedgerSubmitAs(ctx context.Context, as, at, channel string, n int) ([]string, error) {
	member := at
	c, ident, closeFn, err := d.ledgerClientAt(as, at)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	stream, err := c.Broadcast(ctx)
	if err != nil {
		return nil, err
	}
	var txids []string
	for i := 0; i < n; i++ {
		env, txid, err := orderer.NewEndorserTransaction(ident, channel, []byte(fmt.Sprintf("demo tx %d from %s", i, member)), time.Now())
		if err != nil {
			return nil, err
		}
		if err := stream.Send(env); err != nil {
			return nil, fmt.Errorf("broadcast to %s: %w", member, err)
		}
		txids = append(txids, txid)
	}
	for i := 0; i < n; i++ {
		resp, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("broadcast to %s: envelope %d: %w", member, i, err)
		}
		if resp.Status != common.Status_SUCCESS {
			return nil, fmt.Errorf("broadcast to %s: envelope %d: %w %s: %s", member, i, orderer.ErrStatus, resp.Status, resp.Info)
		}
	}
	return txids, stream.CloseSend()
}

// LedgerFetch pulls blocks 0..height-1 of member's ledger with Deliver (as
// 'memberd ledger fetch' does, verifying chain, data hash and that each
// block is signed by a consenter member of the policy) and returns the
// header hashes and the tx ids of the envelopes in blocks 1 and later.
func (d *Consortium) LedgerFetch(ctx context.Context, member string, height uint64) (hashes [][]byte, txs map[string]bool, err error) {
	return d.LedgerFetchFrom(ctx, member, d.defaultChannel(), height)
}

// LedgerFetchFrom is LedgerFetch on channel.
func (d *Consortium) LedgerFetchFrom(ctx context.Context, member, channel string, height uint64) (hashes [][]byte, txs map[string]bool, err error) {
	return d.LedgerFetchAs(ctx, member, member, channel, height)
}

// LedgerFetchAs is LedgerFetch on channel at member at's ledger, as member
// as's appliance identity.
func (d *Consortium) LedgerFetchAs(ctx context.Context, as, at, channel string, height uint64) (hashes [][]byte, txs map[string]bool, err error) {
	c, ident, closeFn, err := d.ledgerClientAt(as, at)
	if err != nil {
		return nil, nil, err
	}
	defer closeFn()
	txs = map[string]bool{}
	var prev *common.Block
	err = orderer.Fetch(ctx, c, ident, channel,
		orderer.SeekRange(0, height-1, ab.SeekInfo_BLOCK_UNTIL_READY), func(b *common.Block) error {
			if err := orderer.VerifyFetched(b, prev, uint64(len(hashes)), d.Layout.Genesis); err != nil {
				return err
			}
			hashes = append(hashes, block.HeaderHash(b.Header))
			if len(hashes) > 1 {
				for i, raw := range b.GetData().GetData() {
					env, err := block.ParseEnvelope(raw)
					if err != nil {
						return fmt.Errorf("block %d envelope %d: %w", b.Header.Number, i, err)
					}
					txs[env.TxID()] = true
				}
			}
			prev = b
			return nil
		})
	return hashes, txs, err
}

// LedgerHeight is the number of blocks member's ledger node stores.
func (d *Consortium) LedgerHeight(member string) (uint64, error) {
	n, err := d.LedgerChannelNode(member, "")
	if err != nil {
		return 0, err
	}
	return n.Height(), nil
}

// LedgerChannelNode is member's ordering node of channel ("": its first).
func (d *Consortium) LedgerChannelNode(member, channel string) (*orderer.Node, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.appliances[member]
	if a == nil || !a.HasLedger() {
		return nil, fmt.Errorf("demo: member %s runs no ledger", member)
	}
	if channel == "" {
		channel = a.LedgerChannel()
	}
	n := a.LedgerChannelNode(channel)
	if n == nil {
		return nil, fmt.Errorf("demo: member %s: channel %q is not open", member, channel)
	}
	return n, nil
}

// LedgerBlock returns block num as member's ledger node stores it (with
// that node's own signature), read with Deliver as member's appliance
// identity, and the certificate member's gRPC endpoint presents on a new
// TLS handshake.
func (d *Consortium) LedgerBlock(ctx context.Context, member string, num uint64) (*common.Block, *x509.Certificate, error) {
	c, ident, closeFn, err := d.ledgerClient(member)
	if err != nil {
		return nil, nil, err
	}
	defer closeFn()
	var out *common.Block
	err = orderer.Fetch(ctx, c, ident, d.defaultChannel(),
		orderer.SeekRange(num, num, ab.SeekInfo_BLOCK_UNTIL_READY), func(b *common.Block) error {
			out = b
			return nil
		})
	if err != nil {
		return nil, nil, err
	}
	td := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13}}
	conn, err := td.DialContext(ctx, "tcp", d.LedgerAddr(member))
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	tc, ok := conn.(*tls.Conn)
	if !ok || len(tc.ConnectionState().PeerCertificates) == 0 {
		return nil, nil, fmt.Errorf("ledger of %s at %s presented no TLS certificate", member, d.LedgerAddr(member))
	}
	return out, tc.ConnectionState().PeerCertificates[0], nil
}

// CheckLedger submits n envelopes to member from and then fetches and
// verifies every block from every member: all must hold the same blocks,
// with all n envelopes. It returns the height.
func (d *Consortium) CheckLedger(ctx context.Context, from string, n int) (uint64, error) {
	if err := d.WaitLedger(ctx); err != nil {
		return 0, err
	}
	txids, err := d.LedgerSubmit(ctx, from, n)
	if err != nil {
		return 0, err
	}
	// SUCCESS means the block holding the envelope is appended on the node
	// that answered (the leader, when from forwarded): the highest height
	// now covers every envelope; the others serve it once they applied it
	// (BLOCK_UNTIL_READY).
	d.mu.Lock()
	var height uint64
	for _, a := range d.appliances {
		if !a.HasLedger() {
			continue
		}
		if node := a.LedgerNode(); node != nil {
			height = max(height, node.Height())
		}
	}
	d.mu.Unlock()
	if height < 2 {
		return 0, fmt.Errorf("demo ledger: height %d at %s after %d submissions", height, from, n)
	}
	var ref [][]byte
	for _, m := range d.Layout.Members {
		hashes, txs, err := d.LedgerFetch(ctx, m, height)
		if err != nil {
			return height, fmt.Errorf("demo ledger: fetch from %s: %w", m, err)
		}
		for _, id := range txids {
			if !txs[id] {
				return height, fmt.Errorf("demo ledger: %s: tx %s answered SUCCESS is not in blocks 1..%d", m, id, height-1)
			}
		}
		if ref == nil {
			ref = hashes
			continue
		}
		for i := range ref {
			if !bytes.Equal(ref[i], hashes[i]) {
				return height, fmt.Errorf("demo ledger: block %d differs between %s and %s", i, d.Layout.Members[0], m)
			}
		}
	}
	if ref == nil {
		return 0, errors.New("demo ledger: no member")
	}
	return height, nil
}

// demoLedgerACL is the policy ACL rule the ledger needs: raft and gRPC
// between consenters (the demo's catch-all 7050-7059 rule covers them too;
// this one says why they are open and stays right if that rule narrows).
func demoLedgerACL() *policy.ACLRule {
	return &policy.ACLRule{From: []string{"role:consenter"}, To: []string{"role:consenter"},
		Ports:   []policy.PortRange{{Lo: LedgerRaftPort, Hi: LedgerPeerPort}},
		Comment: "ledger: raft (7052) and gRPC forwarding/catch-up (7053) between consenters"}
}

package main

// The load client: an application of member-a, with a client identity its
// member CA issued, sending signed 1 KB ENDORSER_TRANSACTION envelopes with
// Fabric Broadcast over TLS to member-a's LAN ledger address, on several
// pipelined streams. An envelope answered SUCCESS is acked; any other
// answer, or a stream that breaks before answering, sends the same
// envelope again (after a pause) on a new stream. A Deliver stream follows
// the chain meanwhile to count what is committed.
//
// Like a Fabric SDK given several orderer endpoints, a stream that breaks
// (member-a killed) is opened again on the next member at once, and goes
// back to member-a once it has been quiet for failoverHold: with member-a
// the only endpoint, killing it when it led raft measured its restart
// (SOAK_FAULT_DOWN plus start-up, 6-7 s), not the ledger's failover.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/policy"
)

type txKey [32]byte

func keyOf(txid string) (k txKey) {
	hex.Decode(k[:], []byte(txid))
	return k
}

// Flags of a tracked envelope.
const (
	fAcked      = 1 << iota // answered SUCCESS
	fSeen                   // seen in the followed chain
	fDupRefused             // a resubmission was refused as a duplicate
	fGaveUp                 // never acked after maxAttempts
	fMember0                // found in the final chain of member 0, 1 << i for member i
)

// maxAttempts: an envelope not acked after so many answers is given up.
const maxAttempts = 200

// item is one envelope and its attempts.
type item struct {
	env      *common.Envelope
	key      txKey
	attempts int
}

// ledgerState is what the client knows about its envelopes.
type ledgerState struct {
	mu         sync.Mutex          // guards the fields below
	tx         map[txKey]uint16    // every envelope created: flags
	unseen     map[txKey]time.Time // acked, not yet seen in the followed chain: ack time
	statuses   map[string]int      // non-SUCCESS answers by status (and "stream broke")
	lastAck    time.Time
	dupInChain int    // tx ids seen twice by the follower
	followedAt uint64 // next block the follower wants

	issued, acked, committed, resolved, retries, reconnects atomic.Int64
}

type loader struct {
	cfg     *config
	id      orderer.Identity
	channel string
	creds   credentials.TransportCredentials
	entry   *grpc.ClientConn
	// targets are the members the streams may use: the entry member
	// first, then the others (failover), each with its last failure.
	targets []*target
	st      *ledgerState
	payload []byte
}

// target is one member's ledger API as a Broadcast endpoint.
type target struct {
	name     string
	conn     *grpc.ClientConn
	failedAt atomic.Int64 // unix nanoseconds of the last broken or refused stream (0: none)
}

// failoverHold: a member whose stream broke is avoided this long, and a
// stream on another member than the entry is ended after this long so the
// next one goes back to the entry.
const failoverHold = 5 * time.Second

// pick returns the index of the target for stream n's next stream: the
// entry unless it failed within failoverHold, else the first other member
// (from n on, so streams spread) that did not.
func (l *loader) pick(n int, now time.Time) int {
	quiet := func(i int) bool {
		at := l.targets[i].failedAt.Load()
		return at == 0 || now.Sub(time.Unix(0, at)) >= failoverHold
	}
	if quiet(0) {
		return 0
	}
	for k := range len(l.targets) - 1 {
		if i := 1 + (n+k)%(len(l.targets)-1); quiet(i) {
			return i
		}
	}
	return 0
}

// close closes every target's connection.
func (l *loader) close() {
	for _, t := range l.targets {
		t.conn.Close()
	}
}

// newLoader makes the client identity (a key in memory, certificate issued
// by the entry member's CA) and connects to the entry member.
func newLoader(c *config, cl *cluster) (*loader, error) {
	raw, err := os.ReadFile(filepath.Join(cl.demo, "genesis.yaml"))
	if err != nil {
		return nil, err
	}
	pol, err := policy.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("genesis.yaml: %w", err)
	}
	m := pol.Member(cl.entry)
	if m == nil {
		return nil, fmt.Errorf("genesis.yaml: no member %s", cl.entry)
	}
	mdir := filepath.Dir(cl.member(cl.entry).config)
	caCerts, err := os.ReadFile(filepath.Join(mdir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	certs, err := hsm.ParseCertificatesPEM(caCerts)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("%s: no CA certificate (%v)", filepath.Join(mdir, "ca.pem"), err)
	}
	// The demo member CA's key is a file (demo only, as demo init says).
	caKey, err := hsm.OpenSoftSigner(filepath.Join(mdir, "ca-key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
	if err != nil {
		return nil, err
	}
	defer caKey.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: "soak-client." + cl.entry, Organization: []string{cl.entry}}})
	if err != nil {
		return nil, err
	}
	cert, err := hsm.SignCSR(certs[0], caKey, csr, hsm.LeafConfig{Now: time.Now()})
	if err != nil {
		return nil, err
	}
	l := &loader{cfg: c, id: orderer.Identity{MSPID: m.MSPID, Cert: cert, Signer: key}, channel: pol.Ledger().Channel,
		st: &ledgerState{tx: map[txKey]uint16{}, unseen: map[txKey]time.Time{}, statuses: map[string]int{}}}
	tc := orderer.TLSCertificate(l.id)
	l.creds = credentials.NewTLS(orderer.ClientTLS(&tc, pol.CAPool()))
	if l.entry, err = l.dial(cl.member(cl.entry).ledgerAddr); err != nil {
		return nil, err
	}
	l.targets = []*target{{name: cl.entry, conn: l.entry}}
	for _, p := range cl.members() {
		if p.name == cl.entry {
			continue
		}
		conn, err := l.dial(p.ledgerAddr)
		if err != nil {
			l.close()
			return nil, err
		}
		l.targets = append(l.targets, &target{name: p.name, conn: conn})
	}
	l.payload = make([]byte, c.size)
	for i := range l.payload {
		l.payload[i] = byte('a' + i%26)
	}
	return l, nil
}

func (l *loader) dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, append(orderer.ClientOptions(), grpc.WithTransportCredentials(l.creds))...)
}

// run sends until cfg.tx envelopes are resolved (acked or given up) or ctx
// ends (max duration, stall, interrupt).
func (l *loader) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range l.cfg.streams {
		wg.Add(1)
		go func() { defer wg.Done(); l.stream(ctx, i) }()
	}
	wg.Wait()
}

// streamState is one stream's envelopes to send again, and its pause.
type streamState struct {
	mu    sync.Mutex // guards retry, pause
	retry []*item
	pause time.Time
}

func (s *streamState) push(it *item, pause time.Duration) {
	s.mu.Lock()
	s.retry = append(s.retry, it)
	if p := time.Now().Add(pause); pause > 0 && p.After(s.pause) {
		s.pause = p
	}
	s.mu.Unlock()
}

// next returns an envelope to send: a retry first, else a new one while
// fewer than cfg.tx were issued; nil when there is nothing to send now.
func (l *loader) next(s *streamState, n int) (*item, error) {
	s.mu.Lock()
	if w := time.Until(s.pause); w > 0 {
		s.mu.Unlock()
		time.Sleep(min(w, 50*time.Millisecond))
		return nil, nil
	}
	if len(s.retry) > 0 {
		it := s.retry[0]
		s.retry = s.retry[1:]
		s.mu.Unlock()
		return it, nil
	}
	s.mu.Unlock()
	if l.st.issued.Add(1) > int64(l.cfg.tx) {
		l.st.issued.Add(-1)
		return nil, nil
	}
	data := append([]byte(fmt.Sprintf("soak stream %d tx %d ", n, l.st.issued.Load())), l.payload...)[:len(l.payload)]
	env, txid, err := orderer.NewTransaction(l.id, l.channel, data, time.Now())
	if err != nil {
		return nil, err
	}
	it := &item{env: env, key: keyOf(txid)}
	l.st.mu.Lock()
	l.st.tx[it.key] = 0
	l.st.mu.Unlock()
	return it, nil
}

// stream runs Broadcast streams one after the other until its work is
// done, on the entry member or, while it fails, another one.
func (l *loader) stream(ctx context.Context, n int) {
	s := &streamState{}
	inflight := make(chan *item, l.cfg.window)
	for ctx.Err() == nil {
		if l.done(s, inflight) {
			return
		}
		at := l.pick(n, time.Now())
		tg := l.targets[at]
		// broke: note that tg failed, and pause before the next stream
		// only when that one would go to the same member.
		broke := func() {
			tg.failedAt.Store(time.Now().UnixNano())
			l.st.reconnects.Add(1)
			if l.pick(n, time.Now()) == at {
				sleepCtx(ctx, 500*time.Millisecond)
			} else {
				sleepCtx(ctx, 20*time.Millisecond)
			}
		}
		sctx, cancel := context.WithCancel(ctx)
		bs, err := ab.NewAtomicBroadcastClient(tg.conn).Broadcast(sctx)
		if err != nil {
			cancel()
			broke()
			continue
		}
		// On another member than the entry, only until failoverHold.
		until := time.Time{}
		if at != 0 {
			until = time.Now().Add(failoverHold)
		}
		recvDone := make(chan error, 1)
		go func() { recvDone <- l.receive(bs, s, inflight) }()
		sendErr := l.send(sctx, bs, n, s, inflight, recvDone, until)
		if sendErr != nil {
			cancel() // else the server ends the stream after CloseSend
		}
		recvErr := <-recvDone
		cancel()
		// Everything sent and not answered goes again on the next stream.
		for len(inflight) > 0 {
			it := <-inflight
			it.attempts++
			s.push(it, 0)
		}
		if sendErr != nil || (recvErr != nil && !errors.Is(recvErr, io.EOF)) {
			if ctx.Err() == nil {
				l.note("stream broke")
				broke()
			}
		}
	}
}

// done: nothing left to send and nothing in flight on this stream.
func (l *loader) done(s *streamState, inflight chan *item) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.retry) == 0 && len(inflight) == 0 && l.st.issued.Load() >= int64(l.cfg.tx)
}

// send sends until the work is done or until passes (if set; then
// CloseSend), the stream's receiver ends, or a send fails.
func (l *loader) send(ctx context.Context, bs ab.AtomicBroadcast_BroadcastClient, n int, s *streamState, inflight chan *item, recvDone chan error, until time.Time) error {
	for {
		select {
		case err := <-recvDone:
			recvDone <- err // for the caller
			return nil
		default:
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !until.IsZero() && time.Now().After(until) {
			bs.CloseSend() // the answers still come; then a new stream
			return nil
		}
		it, err := l.next(s, n)
		if err != nil {
			return err
		}
		if it == nil {
			if l.done(s, inflight) {
				bs.CloseSend()
				return nil
			}
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		select {
		case inflight <- it: // blocks at the window
		case <-ctx.Done():
			s.push(it, 0)
			return ctx.Err()
		case err := <-recvDone:
			recvDone <- err
			s.push(it, 0)
			return nil
		}
		if err := bs.Send(it.env); err != nil {
			return err
		}
	}
}

// receive handles the answers, in order of sending.
func (l *loader) receive(bs ab.AtomicBroadcast_BroadcastClient, s *streamState, inflight chan *item) error {
	for {
		resp, err := bs.Recv()
		if err != nil {
			return err
		}
		var it *item
		select {
		case it = <-inflight:
		default:
			return errors.New("an answer for an envelope never sent")
		}
		if resp.Status == common.Status_SUCCESS {
			l.ack(it)
			continue
		}
		it.attempts++
		switch {
		case strings.Contains(resp.Info, orderer.ErrDuplicate.Error()):
			// Ordered (or being ordered) already from an earlier attempt
			// whose answer was lost: not acked, looked up in the chain at the end.
			l.note("duplicate (refused)")
			l.resolve(it, fDupRefused)
		case it.attempts >= maxAttempts:
			l.note("gave up")
			l.resolve(it, fGaveUp)
		default:
			l.note(resp.Status.String() + reason(resp.Info))
			l.st.retries.Add(1)
			s.push(it, 250*time.Millisecond)
		}
	}
}

// reason is a refusal's info without its numbers (raft IDs, block
// numbers), so that answers group by what they say.
func reason(info string) string {
	r := strings.Map(func(c rune) rune {
		if c >= '0' && c <= '9' {
			return 'N'
		}
		return c
	}, info)
	if len(r) > 100 {
		r = r[:100]
	}
	return " (" + r + ")"
}

func (l *loader) ack(it *item) {
	now := time.Now()
	l.st.mu.Lock()
	f := l.st.tx[it.key]
	l.st.tx[it.key] = f | fAcked
	if f&fSeen == 0 {
		l.st.unseen[it.key] = now
	}
	l.st.lastAck = now
	l.st.mu.Unlock()
	l.st.acked.Add(1)
	l.st.resolved.Add(1)
}

func (l *loader) resolve(it *item, flag uint16) {
	l.st.mu.Lock()
	l.st.tx[it.key] |= flag
	l.st.mu.Unlock()
	l.st.resolved.Add(1)
}

func (l *loader) note(what string) {
	l.st.mu.Lock()
	l.st.statuses[what]++
	l.st.mu.Unlock()
}

// follow reads the chain with Deliver from block 1 on, from the entry
// member or (while it is down) another one, marking tracked tx ids seen.
func (l *loader) follow(ctx context.Context, conns []*grpc.ClientConn) {
	next := uint64(1)
	for i := 0; ctx.Err() == nil; i++ {
		c := ab.NewAtomicBroadcastClient(conns[i%len(conns)])
		orderer.Fetch(ctx, c, l.id, l.channel, orderer.SeekRange(next, orderer.MaxBlock, ab.SeekInfo_BLOCK_UNTIL_READY),
			func(b *common.Block) error {
				if b.GetHeader().GetNumber() != next {
					return fmt.Errorf("got block %d, want %d", b.GetHeader().GetNumber(), next)
				}
				l.observe(b)
				next++
				l.st.mu.Lock()
				l.st.followedAt = next
				l.st.mu.Unlock()
				return nil
			})
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

func (l *loader) observe(b *common.Block) {
	var n int64
	l.st.mu.Lock()
	defer l.st.mu.Unlock()
	for _, raw := range b.GetData().GetData() {
		env, err := block.ParseEnvelope(raw)
		if err != nil {
			continue
		}
		n++
		k := keyOf(env.TxID())
		f, ok := l.st.tx[k]
		if !ok {
			continue
		}
		if f&fSeen != 0 {
			l.st.dupInChain++
		}
		l.st.tx[k] = f | fSeen
		delete(l.st.unseen, k)
	}
	l.st.committed.Add(n)
}

// lostNow counts acked envelopes the follower has not seen although they
// were acked more than grace ago (it may lag behind a little).
func (l *loader) lostNow(grace time.Duration) int {
	l.st.mu.Lock()
	defer l.st.mu.Unlock()
	n := 0
	cut := time.Now().Add(-grace)
	for _, at := range l.st.unseen {
		if at.Before(cut) {
			n++
		}
	}
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

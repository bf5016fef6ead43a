//go:build e2e

package e2e_test

// The load: an application of member-a (a client identity issued by its
// member CA) sends signed ENDORSER_TRANSACTION envelopes with Fabric
// Broadcast to member-a's LAN ledger address (another member's while
// member-a's stream breaks), pipelined on one stream.
// SUCCESS acks an envelope; any other answer, or a broken stream, sends it
// again. verify then fetches every member's chain with Deliver and checks
// that every acked envelope is in it and the block headers are identical.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/policy"
)

type loader struct {
	cl      *cluster
	id      orderer.Identity
	channel string
	creds   credentials.TransportCredentials

	mu       sync.Mutex // guards the fields below
	acked    map[string]time.Time
	ackTimes []time.Time
	unacked  int // refused as duplicate or never answered when stopped
	answers  map[string]int
	seq      int
	pause    time.Time // send nothing before (after a refusal)
	marker   string    // put in every new envelope's payload

	// rate: new envelopes offered per second (0: as fast as the window
	// allows). Bounded so that the suite's time and the chain it checks do
	// not grow with the machine's speed: flat out, a quiet box moved 2
	// million envelopes and the suite passed its 15-minute timeout.
	rate float64
	// chains: what verify has already read of each member's chain, so
	// that each check reads only the blocks cut since the last one.
	chains map[string]*memberChain
}

// defaultLoadRate is the load's offered rate, envelopes/s
// (MEMBERD_E2E_LOAD_RATE overrides it; 0 means flat out).
const defaultLoadRate = 1000

// memberChain is one member's chain as verify has read it so far.
type memberChain struct {
	headers [][]byte        // deterministic header of each block, by number
	txs     map[string]bool // every transaction id in those blocks
}

func (l *loader) setMarker(m string) {
	l.mu.Lock()
	l.marker = m
	l.mu.Unlock()
}

// newLoader makes the client identity of member-a's application.
func newLoader(t *testing.T, cl *cluster) *loader {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(cl.layout.Dir, "genesis.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(raw)
	if err != nil {
		t.Fatalf("genesis.yaml: %v", err)
	}
	entry := cl.layout.Members[0]
	m := pol.Member(entry)
	cert, key := issueClientCert(t, cl, "e2e-client."+entry, time.Now(), 0)
	l := &loader{cl: cl, id: orderer.Identity{MSPID: m.MSPID, Cert: cert, Signer: key}, channel: pol.Ledger().Channel,
		acked: map[string]time.Time{}, answers: map[string]int{}, rate: defaultLoadRate, chains: map[string]*memberChain{}}
	if v := os.Getenv("MEMBERD_E2E_LOAD_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 {
			t.Fatalf("MEMBERD_E2E_LOAD_RATE=%q: want envelopes per second, 0 for flat out", v)
		}
		l.rate = r
	}
	tc := orderer.TLSCertificate(l.id)
	l.creds = credentials.NewTLS(orderer.ClientTLS(&tc, pol.CAPool()))
	return l
}

// issueClientCert issues a certificate for a new key from member-a's CA
// (the demo's ca-key.pem), valid from now for validity (0: a year; a past
// now makes an expired one).
func issueClientCert(t *testing.T, cl *cluster, cn string, now time.Time, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	return issueCertOf(t, cl, cl.layout.Members[0], cn, now, validity)
}

// issueCertOf is issueClientCert from member entry's CA.
func issueCertOf(t *testing.T, cl *cluster, entry, cn string, now time.Time, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	mdir := filepath.Dir(cl.layout.MemberConfig[entry])
	caPEM, err := os.ReadFile(filepath.Join(mdir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cas, err := hsm.ParseCertificatesPEM(caPEM)
	if err != nil || len(cas) == 0 {
		t.Fatalf("%s: %v", filepath.Join(mdir, "ca.pem"), err)
	}
	caKey, err := hsm.OpenSoftSigner(filepath.Join(mdir, "ca-key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer caKey.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: cn, Organization: []string{entry}}})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := hsm.SignCSR(cas[0], caKey, csr, hsm.LeafConfig{Now: now, Validity: validity})
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// conn dials p's ledger API inside p's namespace.
func (l *loader) conn(p *proc) (*grpc.ClientConn, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) { return p.host.DialContext(ctx, "tcp", addr) }
	return grpc.NewClient("passthrough:///"+p.ledger, append(orderer.ClientOptions(),
		grpc.WithTransportCredentials(l.creds), grpc.WithContextDialer(dial))...)
}

// failoverHold: after member-a's stream breaks, the load goes to another
// member for this long (then back to member-a).
const failoverHold = 5 * time.Second

// run submits envelopes to member-a until ctx ends, window in flight, new
// ones at l.rate (resent ones at once). While member-a's streams break (it
// was killed), the load goes to the next member at once, as a Fabric SDK
// with several orderer endpoints does, and back to member-a failoverHold
// later: with member-a its only endpoint, a leader_kill that hit member-a
// measured member-a's restart (a 5.87 s ack gap), not the ledger's failover.
func (l *loader) run(ctx context.Context, window int) {
	var due time.Time // when the next new envelope may go (l.rate > 0)
	entry := l.cl.member(l.cl.layout.Members[0])
	targets := []*proc{entry}
	for _, p := range l.cl.members() {
		if p != entry {
			targets = append(targets, p)
		}
	}
	conns := map[*proc]*grpc.ClientConn{}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	at, away := 0, time.Time{} // the target, and until when it is not member-a
	// failover moves to the next member after a broken stream, and
	// returns the pause before the next one: short when leaving member-a.
	failover := func() time.Duration {
		from := at
		if len(targets) > 1 {
			at = 1 + at%(len(targets)-1)
			away = time.Now().Add(failoverHold)
		}
		if from == 0 && at != 0 {
			return 20 * time.Millisecond
		}
		return 200 * time.Millisecond
	}
	var retry []*common.Envelope
	for ctx.Err() == nil {
		if at != 0 && time.Now().After(away) {
			at = 0
		}
		cc := conns[targets[at]]
		if cc == nil {
			var err error
			if cc, err = l.conn(targets[at]); err != nil {
				l.cl.t.Errorf("load: %v", err)
				return
			}
			conns[targets[at]] = cc
		}
		sctx, cancel := context.WithCancel(ctx)
		bs, err := ab.NewAtomicBroadcastClient(cc).Broadcast(sctx)
		if err != nil {
			cancel()
			l.note("stream failed")
			sleepCtx(ctx, failover())
			continue
		}
		inflight := make(chan *common.Envelope, window)
		recvDone := make(chan struct{})
		var again []*common.Envelope
		go func() {
			defer close(recvDone)
			for {
				resp, err := bs.Recv()
				if err != nil {
					return
				}
				env := <-inflight
				switch {
				case resp.Status == common.Status_SUCCESS:
					l.ack(env)
				case strings.Contains(resp.Info, orderer.ErrDuplicate.Error()):
					l.note("duplicate")
					l.mu.Lock()
					l.unacked++
					l.mu.Unlock()
				default:
					l.note(resp.Status.String() + " (" + trunc(resp.Info, 120) + ")")
					l.mu.Lock()
					again = append(again, env)
					l.pause = time.Now().Add(250 * time.Millisecond) // no tight loop while refused
					l.mu.Unlock()
				}
			}
		}()
		back := false // the stream ended to go back to member-a
	send:
		for ctx.Err() == nil {
			if at != 0 && time.Now().After(away) {
				back = true
				bs.CloseSend() // the answers still come
				break
			}
			var env *common.Envelope
			l.mu.Lock()
			retry = append(retry, again...)
			again = nil
			wait := time.Until(l.pause)
			l.mu.Unlock()
			if wait > 0 {
				sleepCtx(ctx, wait)
				continue
			}
			if len(retry) > 0 {
				env, retry = retry[0], retry[1:]
			} else if l.rate > 0 && time.Until(due) > 0 {
				sleepCtx(ctx, time.Until(due))
				continue
			} else if env, err = l.newEnvelope(); err != nil {
				l.cl.t.Errorf("load: %v", err)
				break
			}
			select {
			case inflight <- env:
			case <-recvDone:
				retry = append(retry, env)
				break send
			case <-ctx.Done():
				break send
			}
			if l.rate > 0 {
				// At most 100 ms of catch-up burst after a stall.
				if floor := time.Now().Add(-100 * time.Millisecond); due.Before(floor) {
					due = floor
				}
				due = due.Add(time.Duration(float64(time.Second) / l.rate))
			}
			if bs.Send(env) != nil {
				break
			}
		}
		if back {
			select { // the answers to what was sent, then EOF
			case <-recvDone:
			case <-time.After(10 * time.Second):
			case <-ctx.Done():
			}
		}
		cancel()
		<-recvDone
		l.mu.Lock()
		retry = append(retry, again...)
		l.mu.Unlock()
		for len(inflight) > 0 {
			retry = append(retry, <-inflight)
		}
		if ctx.Err() == nil && !back {
			l.note("stream broke")
			sleepCtx(ctx, failover())
		}
	}
	l.mu.Lock()
	l.unacked += len(retry)
	l.mu.Unlock()
}

func (l *loader) newEnvelope() (*common.Envelope, error) {
	l.mu.Lock()
	l.seq++
	n, marker := l.seq, l.marker
	l.mu.Unlock()
	env, _, err := orderer.NewTransaction(l.id, l.channel, []byte(fmt.Sprintf("e2e tx %d %s %s", n, marker, bytes.Repeat([]byte("x"), 200))), time.Now())
	return env, err
}

func (l *loader) ack(env *common.Envelope) {
	e, err := block.ParseEnvelope(mustMarshal(env))
	if err != nil {
		return
	}
	now := time.Now()
	l.mu.Lock()
	l.acked[e.TxID()] = now
	l.ackTimes = append(l.ackTimes, now)
	l.mu.Unlock()
}

func (l *loader) note(what string) {
	l.mu.Lock()
	l.answers[what]++
	l.mu.Unlock()
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func mustMarshal(m proto.Message) []byte {
	b, _ := proto.Marshal(m)
	return b
}

// ackedCount returns how many envelopes were acked so far.
func (l *loader) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// gaps returns the longest time without an ack between from and to, and
// the first ack at or after from.
func (l *loader) gaps(from, to time.Time) (longest time.Duration, first time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := from
	for _, at := range l.ackTimes {
		if at.Before(from) || at.After(to) {
			continue
		}
		if first.IsZero() {
			first = at
		}
		longest = max(longest, at.Sub(prev))
		prev = at
	}
	return max(longest, to.Sub(prev)), first
}

func (l *loader) answerSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.answers) == 0 {
		return "none"
	}
	var s []string
	for k, v := range l.answers {
		s = append(s, fmt.Sprintf("%s=%d", k, v))
	}
	return strings.Join(s, " ")
}

// verify reads the chain of every member up to the height at which it holds
// every acked envelope, and checks: every acked envelope is in every chain,
// and the block headers are identical. It returns the number of acked
// envelopes missing (over all members) and the common height. Each call
// reads only what was cut since the previous one, plus the last
// reReadTail blocks again, which must not have changed (a member whose
// store tail was torn fetches them anew).
func (l *loader) verify(ctx context.Context) (lost int, height uint64, err error) {
	l.mu.Lock()
	want := make(map[string]bool, len(l.acked))
	for k := range l.acked {
		want[k] = true
	}
	l.mu.Unlock()
	var chains []*memberChain
	for _, p := range l.cl.members() {
		c := l.chains[p.name]
		if c == nil {
			c = &memberChain{txs: map[string]bool{}}
			l.chains[p.name] = c
		}
		missing := 0
		for id := range want {
			if !c.txs[id] {
				missing++
			}
		}
		if missing > 0 {
			if err := l.readChain(ctx, p, c, want, &missing); err != nil {
				return 0, 0, err
			}
		}
		lost += missing
		chains = append(chains, c)
	}
	height = uint64(len(chains[0].headers))
	for _, c := range chains[1:] {
		height = min(height, uint64(len(c.headers)))
	}
	for i := range height {
		for j, c := range chains[1:] {
			if !bytes.Equal(c.headers[i], chains[0].headers[i]) {
				return lost, height, fmt.Errorf("block %d differs between %s and %s", i, l.cl.members()[0].name, l.cl.members()[j+1].name)
			}
		}
	}
	return lost, height, nil
}

// reReadTail: how many of the blocks verify read before it reads again.
const reReadTail = 64

// readChain reads p's blocks from reReadTail before what c holds until
// every wanted envelope is in c (*missing counts down), at most 60 s (p may
// still be catching up). A block read again must equal the one read before.
func (l *loader) readChain(ctx context.Context, p *proc, c *memberChain, want map[string]bool, missing *int) error {
	cc, err := l.conn(p)
	if err != nil {
		return err
	}
	defer cc.Close()
	fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	next := uint64(max(0, len(c.headers)-reReadTail))
	ferr := orderer.Fetch(fctx, ab.NewAtomicBroadcastClient(cc), l.id, l.channel,
		orderer.SeekRange(next, orderer.MaxBlock, ab.SeekInfo_BLOCK_UNTIL_READY), func(b *common.Block) error {
			n := b.GetHeader().GetNumber()
			if n != next {
				return fmt.Errorf("%s sent block %d, want %d", p.name, n, next)
			}
			next++
			h, _ := proto.MarshalOptions{Deterministic: true}.Marshal(b.GetHeader())
			if n < uint64(len(c.headers)) {
				if !bytes.Equal(h, c.headers[n]) {
					return fmt.Errorf("%w: %s's block %d is not the one it served before", errChanged, p.name, n)
				}
				return nil
			}
			c.headers = append(c.headers, h)
			for _, raw := range b.GetData().GetData() {
				if env, err := block.ParseEnvelope(raw); err == nil {
					id := env.TxID()
					if want[id] && !c.txs[id] {
						*missing--
					}
					c.txs[id] = true
				}
			}
			if *missing == 0 {
				return errStop
			}
			return nil
		})
	if errors.Is(ferr, errChanged) {
		return ferr
	}
	if ferr != nil && !errors.Is(ferr, errStop) && *missing != 0 {
		l.cl.t.Logf("fetching %s's chain: %v (%d acked envelopes not seen)", p.name, ferr, *missing)
	}
	return nil
}

var errChanged = errors.New("chain changed")

var errStop = errors.New("all acked envelopes seen")

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

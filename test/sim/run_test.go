package sim

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/cryptotest"
	"testing/synctest"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/test/sim/simnet"
)

var (
	flagSeeds = flag.Int("sim.seeds", 0, "how many seeds to run (default 3, 1 with -short)")
	flagSeed  = flag.Uint64("sim.seed", 1, "the first seed")
	flagTx    = flag.Int("sim.tx", 150, "envelopes per client (3 clients)")
	flagFault = flag.Duration("sim.faults", 30*time.Second, "virtual time during which faults are injected")
	flagLogs  = flag.Bool("sim.logs", false, "with -v: the nodes' logs too")
	flagRetry = flag.Bool("sim.resubmit", true, "clients resubmit an envelope whose answer was not SUCCESS")
	// flagSkew: policy versions reach the nodes at different times, as
	// they do when each member's admins copy them into its policy folder.
	// It found that a raft leader whose policy was older than the one that
	// removed a consenter added it back (seed 4); conf changes now carry
	// their policy version and the log's newest one holds a lagging leader
	// (node/raftlog MembershipVersion). -sim.policyskew=false delivers
	// each version to every node at once.
	flagSkew        = flag.Bool("sim.policyskew", true, "policy versions reach each node at its own time (false: every node at once)")
	flagTunnelSeeds = flag.Int("sim.tunnelseeds", 0, "how many seeds TestConsortiumSim runs (default: -sim.seeds)")
	flagWatchdog    = flag.Duration("sim.watchdog", 5*time.Minute, "real time after which a seed that has not ended dumps every goroutine and exits")
	flagHostile     = flag.Bool("sim.hostile", false, "the network also duplicates and reorders raft messages within a connection (beyond TCP)")
)

// TestLedgerSim runs the ledger simulation for each seed: see runLedger.
// A failing seed prints the command that runs it alone.
func TestLedgerSim(t *testing.T) { runSeeds(t, "TestLedgerSim", false) }

// runSeeds runs the seeds of one simulation (tunnel: TestConsortiumSim).
func runSeeds(t *testing.T, test string, tunnel bool) {
	n := *flagSeeds
	if tunnel && *flagTunnelSeeds > 0 {
		n = *flagTunnelSeeds
	}
	if n == 0 {
		n = 3
		if testing.Short() {
			n = 1
		}
	}
	for seed := *flagSeed; seed < *flagSeed+uint64(n); seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			start := time.Now()
			var sum string
			passed := false
			// synctest.Test ends this goroutine (FailNow) when the bubble
			// failed: say how to rerun the seed before that.
			defer func() {
				if sum != "" {
					t.Logf("seed %d: %s; %.1fs real", seed, sum, time.Since(start).Seconds())
				}
				if passed {
					return
				}
				mk := ""
				if f := flagsSet(); f != "" {
					mk = fmt.Sprintf(" SIMFLAGS='%s'", f[1:])
				}
				t.Logf("seed %d FAILED; run it alone with (the fault schedule is the same every run, the goroutine interleaving is not: give it a few runs):\n\tmake sim SEED=%d SEEDS=1 RUNS=10 SIMRUN=%s%s\n\tgo test -count=10 -v -run '%s' ./test/sim -sim.seed=%d -sim.seeds=1%s", seed, seed, test, mk, test, seed, flagsSet())
			}()
			// A bubble whose goroutines wait on something synctest does
			// not count as durably blocked (a sync.Mutex held across a
			// blocked write, I/O outside the bubble) stops virtual time
			// for good: say which seed, with every stack, rather than
			// wait for go test's timeout.
			watchdog := time.AfterFunc(*flagWatchdog, func() {
				buf := make([]byte, 64<<20)
				buf = buf[:runtime.Stack(buf, true)]
				fmt.Fprintf(os.Stderr, "%s seed %d: no end after %v of real time; virtual time stopped? Goroutines not durably blocked are the ones to look at (no \"durable\" in their state):\n%s\n", test, seed, *flagWatchdog, buf)
				os.Exit(2)
			})
			defer watchdog.Stop()
			// crypto/rand (raft's randomized election timeouts, keys,
			// nonces, TLS) from a stream of the seed, so that which node
			// leads when, and so the whole run, follows from the seed.
			// Process-wide: the seeds (and their tests) run one at a time.
			cryptotest.SetGlobalRandom(t, seed^0xc0ffee5eed)
			synctest.Test(t, func(t *testing.T) { sum = runLedger(t, seed, tunnel) })
			passed = true
		})
	}
}

// flagsSet returns the -sim.* flags given other than the seed ones, to
// repeat in a rerun command.
func flagsSet() string {
	var out string
	flag.Visit(func(f *flag.Flag) {
		if strings.HasPrefix(f.Name, "sim.") && f.Name != "sim.seed" && f.Name != "sim.seeds" {
			out += fmt.Sprintf(" -%s=%s", f.Name, f.Value)
		}
	})
	return out
}

// runLedger runs one seed: the three nodes start, three clients (one per
// member, each on its own member's node) submit envelopes while faults hit
// the network and the nodes, then everything heals and the invariants are
// checked: every SUCCESS-answered envelope is in every chain exactly once,
// the chains are identical (and prefixes of each other at every check
// during the run), and every block verifies.
func runLedger(t *testing.T, seed uint64, tunnel bool) string {
	s := newLedgerSim(t, seed, tunnel)
	s.logf("seed %d: faults %+v snapshotEvery %d catchUp %d maxMsgs %d", seed, s.tune.faults, s.tune.snapshotEvery, s.tune.catchUp, s.tune.maxMsgs)
	if s.tn != nil {
		for _, id := range relayIDs {
			s.tn.startRelay(id)
		}
		defer func() {
			for _, id := range relayIDs {
				s.tn.crashRelay(id)
			}
		}()
	}
	for _, n := range s.nodes {
		s.start(n.id)
	}
	defer func() {
		for _, n := range s.nodes {
			s.stop(n.id)
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	checkDone := make(chan struct{})
	wg.Go(func() { s.checkPrefixes(checkDone) })
	removalDone := make(chan struct{})
	var removal sync.WaitGroup
	removal.Go(func() { s.watchRemoval(removalDone) })
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		s.injectFaults(ctx, *flagFault)
		if s.tn != nil && *flagLogs {
			for range 3 {
				s.tn.dump()
				time.Sleep(5 * time.Second)
			}
		}
	}()
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		if s.tn != nil {
			s.relayFaults(ctx, *flagFault)
		}
	}()
	var load sync.WaitGroup
	for _, n := range s.nodes {
		load.Go(func() { s.client(ctx, n) })
	}
	load.Wait()
	<-faultsDone
	<-relayDone
	close(checkDone)
	wg.Wait()

	// Heal everything and let the nodes converge.
	s.nw.HealAll()
	s.nw.SetFaults(simnet.Faults{})
	if s.tn != nil {
		for _, id := range relayIDs {
			if s.tn.relays[id] == nil {
				s.tn.startRelay(id)
			}
		}
	}
	for _, n := range s.nodes {
		n.clock.Store(0)
		if n.np.Load() == nil {
			s.start(n.id)
		}
	}
	// Every node gets every policy version.
	for _, n := range s.nodes {
		s.deliver(n, false, 1, 2, 3, 4)
	}
	s.logf("healed; every node has policy v4")
	h := s.converge(2 * time.Minute)
	// The leader removes the consenter only once the remaining voters
	// are caught up: give it the time (through the tunnel, a voter that
	// was cut off catches up after the heal, and the chains may agree
	// before the removal is through).
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		s.mu.Lock()
		done := !s.removedAt.IsZero()
		s.mu.Unlock()
		if done {
			break
		}
	}
	close(removalDone)
	removal.Wait()
	s.checkChains(h)
	s.mu.Lock()
	if s.removedAt.IsZero() {
		s.t.Errorf("seed %d: %s still a raft member after healing", s.seed, s.removedName)
	}
	if len(s.toRemoved) > 0 {
		s.dumpEventsLocked()
		s.t.Errorf("seed %d: replication sent to %s after its removal: %v", s.seed, s.removedName, s.toRemoved)
	}
	s.mu.Unlock()
	tunnelSum := ""
	if s.tn != nil {
		tunnelSum = "; " + s.checkTunnel()
	}
	st := s.nw.Stats()
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%d acked, height %d, other answers %v; net %+v%s; fingerprint %s", len(s.acked), h, s.errs, st, tunnelSum, s.fingerprintLocked(h))
}

// client submits its envelopes to its own member's node, some at a time,
// resubmitting one whose answer was not SUCCESS until it is SUCCESS or a
// duplicate (already ordered or being ordered).
func (s *ledgerSim) client(ctx context.Context, n *simNode) {
	id := s.identity(n.member, "client-"+n.member)
	total := *flagTx
	const workers = 4
	next := make(chan int, total)
	for i := range total {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range next {
				env, txid, err := orderer.NewTransaction(id, "trade", fmt.Appendf(nil, "%s-%d-%d", n.member, w, i), time.Now())
				if err != nil {
					s.t.Error(err)
					return
				}
				raw, err := marshal(env)
				if err != nil {
					s.t.Error(err)
					return
				}
				s.submit(ctx, n, txid, raw)
			}
		})
	}
	wg.Wait()
}

func (s *ledgerSim) submit(ctx context.Context, n *simNode, txid string, raw []byte) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 && n.id == s.removedID {
			if on := n.np.Load(); on != nil && errors.Is(on.Healthy(), orderer.ErrRemoved) {
				n = s.nodes[n.id%uint64(len(s.nodes))] // its member left the consenters: use another's node
			}
		}
		if attempt == 60 {
			s.note("gave up")
			return
		}
		on := n.np.Load()
		if on == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		// An Order error means the envelope was not taken: send it again.
		// A Wait error is ambiguous (it may still be ordered): send it
		// again only with -sim.resubmit, as a client told "resubmit" does.
		p, err := on.Order(ctx, raw)
		ambiguous := false
		if err == nil {
			err, ambiguous = p.Wait(ctx), true
		}
		switch {
		case err == nil:
			s.mu.Lock()
			s.acked[txid] = true
			s.mu.Unlock()
			return
		case errors.Is(err, orderer.ErrDuplicate):
			s.note("duplicate")
			return
		}
		if s.memberGone(n, err) {
			s.note("refused_member_removed")
			return
		}
		s.mu.Lock()
		s.history[txid] = append(s.history[txid], fmt.Sprintf("t=%v %s: %v", time.Since(simEpoch).Round(time.Millisecond), n.name, err))
		s.mu.Unlock()
		if ambiguous {
			s.note("ambiguous_" + errKind(err))
			if !*flagRetry {
				return
			}
		} else {
			s.note("refused_" + errKind(err))
		}
		time.Sleep(time.Duration(100+attempt*50) * time.Millisecond)
	}
}

func errKind(err error) string {
	switch {
	case errors.Is(err, orderer.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, orderer.ErrClosed):
		return "closed"
	case errors.Is(err, orderer.ErrNotLeader):
		return "not_leader"
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, ':'); i > 0 {
		msg = msg[:i]
	}
	return msg
}

func (s *ledgerSim) note(kind string) {
	s.mu.Lock()
	s.errs[kind]++
	s.mu.Unlock()
}

func (s *ledgerSim) identity(member, cn string) orderer.Identity {
	leaf := s.cons.CAs[member].Issue(s.t, cn)
	return orderer.Identity{MSPID: s.pol.Member(member).MSPID, Cert: leaf.Cert, Signer: leaf.Key}
}

// injectFaults hits the network and the nodes for d of virtual time, one
// fault at a time, each undone before the next.
func (s *ledgerSim) injectFaults(ctx context.Context, d time.Duration) {
	end := time.Now().Add(d)
	r := s.rng
	name := func(i int) string { return s.nodes[i].name }
	for time.Now().Before(end) && ctx.Err() == nil {
		time.Sleep(time.Duration(200+r.IntN(2000)) * time.Millisecond)
		x := r.IntN(len(s.nodes))
		hold := time.Duration(300+r.IntN(6000)) * time.Millisecond
		switch k := r.IntN(100); {
		case k < 20: // a policy version (or a rollback attempt) to a node
			s.policyEvent()
			continue
		case k < 35: // isolate a node
			m := []simnet.Mode{simnet.Reset, simnet.Silent}[r.IntN(2)]
			s.logf("partition %s from all (%v) for %v", name(x), m, hold)
			for _, y := range s.linkPeers(x) {
				s.nw.Partition(name(x), y, m)
			}
			time.Sleep(hold)
			for _, y := range s.linkPeers(x) {
				s.nw.Heal(name(x), y)
			}
			s.logf("healed %s", name(x))
		case k < 43 && s.tn != nil: // a member's link to one relay
			s.tunnelFault(r, x, hold, 2)
		case k < 43: // cut one link
			y := (x + 1 + r.IntN(len(s.nodes)-1)) % len(s.nodes)
			m := []simnet.Mode{simnet.Reset, simnet.Silent}[r.IntN(2)]
			s.logf("cut %s-%s (%v) for %v", name(x), name(y), m, hold)
			s.nw.Partition(name(x), name(y), m)
			time.Sleep(hold)
			s.nw.Heal(name(x), name(y))
		case k < 63: // crash and restart
			s.logf("crash %s for %v", name(x), hold)
			s.stop(uint64(x + 1))
			time.Sleep(hold)
			s.start(uint64(x + 1))
			s.logf("restarted %s", name(x))
		case k < 75: // clock jump
			j := time.Duration(r.IntN(20*60)-10*60) * time.Second
			s.nodes[x].clock.Add(int64(j))
			s.logf("clock of %s jumps %v", name(x), j)
		case k < 85: // leader crash
			for i, n := range s.nodes {
				if on := n.np.Load(); on != nil && on.IsLeader() {
					s.logf("crash leader %s for %v", name(i), hold)
					s.stop(n.id)
					time.Sleep(hold)
					s.start(n.id)
					s.logf("restarted %s", name(i))
					break
				}
			}
		default: // new fault rates
			f := randomFaults(r, 2)
			s.logf("faults now %+v", f)
			if s.tn != nil {
				f = linkFaults(f)
			}
			s.nw.SetFaults(f)
		}
	}
}

// converge waits until every node has the same height and the nodes agree
// on a leader, and returns the height.
func (s *ledgerSim) converge(timeout time.Duration) uint64 {
	deadline := time.Now().Add(timeout)
	for {
		var hs []uint64
		leaders := 0
		for _, n := range s.remaining() {
			on := n.np.Load()
			hs = append(hs, on.Height())
			if on.IsLeader() {
				leaders++
			}
		}
		if leaders == 1 && slices.Min(hs) == slices.Max(hs) {
			// Equal now; give a cut in flight the time to land everywhere.
			time.Sleep(2 * time.Second)
			same := true
			for i, n := range s.remaining() {
				same = same && n.np.Load().Height() == hs[i]
			}
			if same {
				return hs[0]
			}
			continue
		}
		if time.Now().After(deadline) {
			s.dumpEvents()
			s.t.Fatalf("seed %d: no convergence within %v after healing: heights %v, %d leaders", s.seed, timeout, hs, leaders)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// remaining are the nodes other than the removed one.
func (s *ledgerSim) remaining() []*simNode {
	return slices.DeleteFunc(slices.Clone(s.nodes), func(n *simNode) bool { return n.id == s.removedID })
}

// checkPrefixes, every 500ms until done, checks that the chains of the
// running nodes are prefixes of each other: at the lowest height of two
// nodes their last common block is the same.
func (s *ledgerSim) checkPrefixes(done chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-time.After(500 * time.Millisecond):
		}
		var ns []*orderer.Node
		for _, n := range s.nodes {
			if on := n.np.Load(); on != nil {
				ns = append(ns, on)
			}
		}
		for i := 1; i < len(ns); i++ {
			h := min(ns[0].Height(), ns[i].Height())
			a, err1 := ns[0].Store().Get(h - 1)
			b, err2 := ns[i].Store().Get(h - 1)
			if err1 != nil || err2 != nil {
				continue // closed by a crash meanwhile
			}
			if string(block.HeaderHash(a.Header)) != string(block.HeaderHash(b.Header)) {
				s.dumpEvents()
				s.t.Errorf("seed %d: chains diverge at block %d", s.seed, h-1)
			}
		}
	}
}

// checkChains checks the first h blocks of every node (the removed one:
// those it has): the same on every node,
// each verifying against its predecessor with valid signatures, every
// acked envelope in them exactly once and no envelope twice.
func (s *ledgerSim) checkChains(h uint64) {
	t := s.t
	count := map[string]int{}
	where := map[string][]uint64{}
	var prev *common.Block
	for i := range h {
		var first *common.Block
		for _, n := range s.nodes {
			on := n.np.Load()
			if n.id == s.removedID && i >= on.Height() {
				continue // the removed node's chain must be a prefix
			}
			b, err := on.Store().Get(i)
			if err != nil {
				t.Fatalf("seed %d: node %s block %d: %v", s.seed, n.name, i, err)
			}
			if first == nil {
				first = b
			} else if string(block.HeaderHash(b.Header)) != string(block.HeaderHash(first.Header)) ||
				string(block.DataHash(b.Data)) != string(block.DataHash(first.Data)) {
				t.Fatalf("seed %d: block %d differs between nodes", s.seed, i)
			}
			if i > 0 {
				if err := block.VerifySignatures(b, block.VerifyCreatorSignature); err != nil {
					t.Fatalf("seed %d: node %s block %d: %v", s.seed, n.name, i, err)
				}
			}
		}
		if err := block.Verify(first, prev); err != nil {
			t.Fatalf("seed %d: block %d: %v", s.seed, i, err)
		}
		prev = first
		if i == 0 {
			continue
		}
		for _, raw := range first.Data.Data {
			e, err := block.ParseEnvelope(raw)
			if err != nil {
				t.Fatalf("seed %d: block %d: %v", s.seed, i, err)
			}
			if e.TxID() != "" {
				count[e.TxID()]++
				where[e.TxID()] = append(where[e.TxID()], i)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lost := 0
	for id := range s.acked {
		if count[id] == 0 {
			lost++
		}
	}
	twice := 0
	for id, c := range count {
		if c > 1 {
			twice++
			if twice <= 3 {
				t.Logf("seed %d: tx %s in blocks %v; client saw %q", s.seed, id, where[id], s.history[id])
			}
		}
	}
	if lost > 0 || twice > 0 {
		s.dumpEventsLocked()
		t.Errorf("seed %d: %d acked envelopes missing from the chain, %d envelopes in it more than once", s.seed, lost, twice)
	}
}

func (s *ledgerSim) dumpEvents() {
	if s.tn != nil {
		s.tn.dump()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dumpEventsLocked()
}

func (s *ledgerSim) dumpEventsLocked() {
	s.t.Logf("seed %d events:\n%s", s.seed, strings.Join(s.events, "\n"))
}

// fingerprintLocked sums up what a run did, to compare runs of one seed:
// the genesis block's data (the members' certificates), the hash of the last block every remaining node has (it covers the whole
// chain: which envelopes, in which order, in which blocks) and a hash of
// the event log (which node was leader when a leader crash came, the
// virtual times of the faults).
func (s *ledgerSim) fingerprintLocked(h uint64) string {
	head, shape := "none", sha256.New()
	for _, n := range s.remaining() {
		if on := n.np.Load(); on != nil {
			if b, err := on.Store().Get(h - 1); err == nil {
				head = fmt.Sprintf("%x", block.HeaderHash(b.Header)[:6])
			}
			// The chain's shape without its signatures and tx ids
			// (both drawn from crypto/rand, so in the order the
			// goroutines drew): envelopes per block.
			for i := range h {
				if b, err := on.Store().Get(i); err == nil {
					fmt.Fprintf(shape, "%d,", len(b.Data.Data))
				}
			}
			break
		}
	}
	ev := sha256.Sum256([]byte(strings.Join(s.events, "\n")))
	gen := sha256.Sum256(block.DataHash(s.genesis.Data))
	return fmt.Sprintf("genesis=%x head=%s shape=%x events=%x", gen[:6], head, shape.Sum(nil)[:6], ev[:6])
}

//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/netnstest"
)

// row is one line of the summary table printed at the end.
type row struct{ scenario, result, figures string }

type suite struct {
	cl   *cluster
	load *loader
	rows []row
}

func (s *suite) record(t *testing.T, scenario, figures string) {
	res := "ok"
	if t.Failed() {
		res = "FAIL"
	}
	s.rows = append(s.rows, row{scenario, res, figures})
	t.Logf("%s: %s: %s", scenario, res, figures)
}

// TestE2E runs the real binary on six network-namespace hosts (two relays,
// three members behind corporate nftables egress rules, a proxy host) with
// ledger load on member-a throughout, and goes through the scenarios of
// issue #11 in order. Each prints its figures; the assertions are the
// correctness properties (no SUCCESS-acked envelope lost, identical blocks
// on every member, clear errors) and generous bounds that only fail when a
// mechanism does not work at all (the machine is shared and slow).
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the memberd binary on network-namespace hosts")
	}
	start := time.Now()
	cl := newCluster(t)
	s := &suite{cl: cl}
	defer func() {
		t.Logf("summary (%v in all):\n%s", time.Since(start).Round(time.Second), s.table())
	}()
	if !t.Run("formed", s.formed) {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.load.run(ctx, 64) }()
	defer func() { stop(); wg.Wait() }()
	t.Run("relays_blind", s.relaysBlind)
	t.Run("udp_blocked", s.udpBlocked(false))
	t.Run("udp_blocked_on_path", s.udpBlocked(true))
	t.Run("proxy_only", s.proxyOnly)
	t.Run("relay_kill", s.relayKill)
	t.Run("leader_kill", s.leaderKill)
	t.Run("partition", s.partition(30*time.Second))
	t.Run("torn_tail", s.tornTail)
	t.Run("bad_input", s.badInput)
	t.Run("hostile_tls", s.hostileTLS)
	t.Run("bad_envelopes", s.badEnvelopes)
	t.Run("member_abuse", s.memberAbuse)
	t.Run("hsm_token_loss", s.hsmTokenLoss)
	t.Run("bad_policy_files", s.badPolicyFiles)
	t.Run("config_typos", s.configTypos)
	t.Run("removal", s.removal)
	t.Run("rollback", s.rollback)
	t.Run("hsm_keys_safe", s.hsmKeysSafe)

	stop()
	wg.Wait()
	lost, height, err := s.load.verify(context.Background())
	if err != nil {
		t.Error(err)
	}
	if lost > 0 {
		t.Errorf("%d SUCCESS-acked envelopes missing from member chains at the end", lost)
	}
	s.rows = append(s.rows, row{"whole run", map[bool]string{true: "FAIL", false: "ok"}[t.Failed()],
		fmt.Sprintf("%d acked, %d lost, chains identical to height %d; non-SUCCESS answers: %s",
			s.load.ackedCount(), lost, height, s.load.answerSummary())})
	cl.checkAlive(t)
}

func (s *suite) table() string {
	var b strings.Builder
	b.WriteString("| scenario | result | figures |\n|---|---|---|\n")
	for _, r := range s.rows {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", r.scenario, r.result, r.figures)
	}
	return b.String()
}

// checkLedger verifies that no acked envelope is lost and the chains agree.
func (s *suite) checkLedger(t *testing.T) string {
	t.Helper()
	lost, height, err := s.load.verify(context.Background())
	if err != nil {
		t.Error(err)
	}
	if lost > 0 {
		t.Errorf("%d SUCCESS-acked envelopes are missing from member chains", lost)
	}
	return fmt.Sprintf("%d acked, %d lost, identical to height %d", s.load.ackedCount(), lost, height)
}

// formed: relays and members start on their hosts behind the corporate
// rules, the consortium elects a leader, and envelopes are committed
// identically on every member.
func (s *suite) formed(t *testing.T) {
	cl := s.cl
	for _, p := range cl.procs {
		cl.start(t, p)
	}
	var last error
	took, ok := waitFor(120*time.Second, func() bool {
		for _, p := range cl.procs {
			if last = cl.ready(p); last != nil {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("consortium not ready after %v: %v", took, last)
	}
	var paths []string
	for _, p := range cl.members() {
		st, err := cl.status(p)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p.name+": "+relayPaths(st))
	}
	s.load = newLoader(t, cl)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	s.load.run(ctx, 64)
	cancel()
	if s.load.ackedCount() == 0 {
		t.Fatalf("no envelope acked in 8 s; answers: %s", s.load.answerSummary())
	}
	s.record(t, "consortium formed behind egress rules", fmt.Sprintf("ready %.2f s after start (%s); %s",
		took.Seconds(), strings.Join(paths, "; "), s.checkLedger(t)))
}

// udpBlocked: UDP to and from the relays is dropped on every member host,
// also for established flows; the members must move to TCP, with no acked
// envelope lost; then UDP is allowed again.
//
// With onPath the drop happens on the way (the bridge, like a perimeter
// firewall: silent, the member only notices that nothing comes back);
// without, in each member host's own ruleset (its sends fail at once).
func (s *suite) udpBlocked(onPath bool) func(*testing.T) {
	return func(t *testing.T) { s.udpBlock(t, onPath) }
}

func (s *suite) udpBlock(t *testing.T, onPath bool) {
	cl := s.cl
	allPaths := func(want string) bool {
		for _, p := range cl.members() {
			st, err := cl.status(p)
			if err != nil || len(st.Relays) == 0 {
				return false
			}
			for _, r := range st.Relays {
				if r.State != "up" || r.Path != want {
					return false
				}
			}
		}
		return true
	}
	if _, ok := waitFor(30*time.Second, func() bool { return allPaths("quic") }); !ok {
		t.Fatalf("members not on QUIC to both relays before the fault: %s", s.pathsNow())
	}
	_, term0 := cl.leader()
	t0 := time.Now()
	bridge := cl.net.Bridge()
	if onPath {
		if err := bridge.Nft(cl.nft, "table bridge perimeter {\n chain through { type filter hook forward priority 0; policy accept; meta l4proto udp counter drop; }\n}\n"); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range cl.members() {
		if onPath {
			break
		}
		for _, r := range []string{"insert rule inet corp out meta l4proto udp counter drop", "insert rule inet corp in meta l4proto udp counter drop"} {
			if out, err := p.host.NftOut(cl.nft, strings.Fields(r)...); err != nil {
				t.Fatalf("%s: nft %s: %v: %s", p.name, r, err, out)
			}
		}
	}
	_, ok := waitFor(30*time.Second, func() bool { return allPaths("tcp") })
	took := time.Since(t0) // from the first host's rule (the hosts get theirs in turn)
	if !ok {
		t.Errorf("members not on TCP to both relays 30 s after UDP was blocked: %s", s.pathsNow())
	} else if onPath && took > 3*time.Second {
		// The relay client dials TCP beside a QUIC link silent for 300 ms
		// and moves at 600 ms (measured 0.67 s here); giving the link up
		// and redialling took 5.9 s and cost raft its leader.
		t.Errorf("members on TCP %.2f s after the silent UDP drop began, want about 1 s (under 3 s)", took.Seconds())
	}
	// The ledger must go on over TCP (after a new raft election if the
	// switch took longer than the election timeout).
	acked0 := s.load.ackedCount()
	_, okAck := waitFor(30*time.Second, func() bool { return s.load.ackedCount() > acked0 })
	resumed := time.Since(t0)
	if !okAck {
		t.Errorf("no envelope acked within 30 s of the switch to TCP; answers: %s", s.load.answerSummary())
	}
	time.Sleep(2 * time.Second)
	gap, _ := s.load.gaps(t0, time.Now())
	_, term1 := cl.leader()
	dropped := 0
	if onPath {
		dropped = s.udpDropped(bridge, "table", "bridge", "perimeter")
		if out, err := bridge.NftOut(cl.nft, "delete", "table", "bridge", "perimeter"); err != nil {
			t.Fatalf("unblocking: %v: %s", err, out)
		}
	}
	for _, p := range cl.members() {
		if !onPath {
			dropped += s.udpDropped(p.host, "table", "inet", "corp")
		}
	}
	if dropped == 0 {
		t.Errorf("the UDP drop rules dropped no packet: the block did not happen")
	}
	// UDP allowed again: the members go back to QUIC at their re-probe.
	for _, p := range cl.members() {
		if err := p.host.Nft(cl.nft, corporateRules(false)); err != nil && !onPath {
			t.Fatal(err)
		}
	}
	back, okBack := waitFor(90*time.Second, func() bool { return allPaths("quic") })
	if !okBack {
		t.Logf("not back on QUIC 90 s after UDP was allowed: %s", s.pathsNow())
	}
	where := "in each member host's rules"
	if onPath {
		where = "on the path, silently"
	}
	s.record(t, "UDP blocked "+where+" (established flows too)", fmt.Sprintf("all members on TCP %.2f s after the block began (%d UDP packets dropped); acks after %.2f s, longest ack gap %.2f s, raft term %d -> %d; back to QUIC %s after unblocking; %s",
		took.Seconds(), dropped, resumed.Seconds(), gap.Seconds(), term0, term1, secsOr(back, okBack, "not within 90 s"), s.checkLedger(t)))
}

// udpDropped sums the packet counters of the UDP drop rules of a table
// ("table", family, name) on h.
func (s *suite) udpDropped(h *netnstest.Host, table ...string) int {
	out, err := h.NftOut(s.cl.nft, append([]string{"list"}, table...)...)
	if err != nil {
		s.cl.t.Logf("%s: nft list: %v: %s", h.Name, err, out)
		return 0
	}
	n := 0
	for _, m := range udpCounter.FindAllStringSubmatch(out, -1) {
		k, _ := strconv.Atoi(m[1])
		n += k
	}
	return n
}

var udpCounter = regexp.MustCompile(`l4proto udp counter packets (\d+)`)

func (s *suite) pathsNow() string {
	var b []string
	for _, p := range s.cl.members() {
		st, err := s.cl.status(p)
		if err != nil {
			b = append(b, p.name+": "+err.Error())
			continue
		}
		b = append(b, p.name+": "+relayPaths(st))
	}
	return strings.Join(b, "; ")
}

func secsOr(d time.Duration, ok bool, otherwise string) string {
	if !ok {
		return otherwise
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// relayKill: kill -9 the relay member-a uses; traffic must go on over the
// other one; then it restarts and the members reconnect to it.
func (s *suite) relayKill(t *testing.T) {
	cl := s.cl
	_, term0 := cl.leader()
	victim := cl.procs[0]
	if st, err := cl.status(cl.member(cl.layout.Members[0])); err == nil {
		for _, r := range st.Relays {
			if r.Active {
				for _, p := range cl.procs {
					if p.relay && p.name == r.ID {
						victim = p
					}
				}
			}
		}
	}
	t0 := time.Now()
	cl.signal(victim, syscall.SIGKILL)
	moved, ok := waitFor(30*time.Second, func() bool {
		for _, p := range cl.members() {
			st, err := cl.status(p)
			if err != nil {
				return false
			}
			on := false
			for _, r := range st.Relays {
				on = on || (r.Active && r.ID != victim.name && r.State == "up")
			}
			if !on {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Errorf("members not active on the other relay 30 s after %s was killed: %s", victim.name, s.pathsNow())
	}
	ackedAt := s.load.ackedCount()
	resumed, okAck := waitFor(30*time.Second, func() bool { return s.load.ackedCount() > ackedAt })
	if !okAck {
		t.Errorf("no envelope acked within 30 s after %s was killed", victim.name)
	}
	time.Sleep(2 * time.Second)
	gap, _ := s.load.gaps(t0, time.Now())
	_, term1 := cl.leader()
	cl.start(t, victim)
	rejoined, okRe := waitFor(60*time.Second, func() bool {
		if cl.ready(victim) != nil {
			return false
		}
		for _, p := range cl.members() {
			st, err := cl.status(p)
			if err != nil {
				return false
			}
			for _, r := range st.Relays {
				if r.ID == victim.name && r.State != "up" {
					return false
				}
			}
		}
		return true
	})
	if !okRe {
		t.Errorf("members not reconnected to %s 60 s after its restart: %s", victim.name, s.pathsNow())
	}
	s.record(t, "relay kill -9", fmt.Sprintf("%s killed: members active on the other relay after %.2f s; longest ack gap %.2f s (acks went on %.2f s after the check began); raft terms %d -> %d; reconnected %.2f s after restart; %s",
		victim.name, moved.Seconds(), gap.Seconds(), resumed.Seconds(), term0, term1, rejoined.Seconds(), s.checkLedger(t)))
}

// leaderKill: kill -9 the raft leader; the others elect a new one; the old
// one restarts and catches up.
func (s *suite) leaderKill(t *testing.T) {
	cl := s.cl
	old, term0 := cl.leader()
	if old == nil {
		t.Fatal("no raft leader known before the fault")
	}
	tKill := time.Now()
	cl.signal(old, syscall.SIGKILL)
	elected, ok := waitFor(30*time.Second, func() bool {
		for _, p := range cl.members() {
			if p == old {
				continue
			}
			if st, err := cl.status(p); err == nil && st.Ledger.Leader != "" && st.Ledger.Leader != old.name && st.Ledger.Term > term0 {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Errorf("no new leader 30 s after %s (leader, term %d) was killed", old.name, term0)
	}
	time.Sleep(time.Second)
	cl.start(t, old)
	caught, okUp := waitFor(90*time.Second, func() bool {
		if cl.ready(old) != nil {
			return false
		}
		ld, _ := cl.leader()
		if ld == nil {
			return false
		}
		lst, err1 := cl.status(ld)
		ost, err2 := cl.status(old)
		return err1 == nil && err2 == nil && ost.Ledger.Height+1 >= lst.Ledger.Height
	})
	if !okUp {
		t.Errorf("%s not caught up 90 s after restart", old.name)
	}
	nl, term1 := cl.leader()
	time.Sleep(2 * time.Second)
	gap, _ := s.load.gaps(tKill, time.Now())
	s.record(t, "leader kill -9", fmt.Sprintf("%s (term %d) killed: new leader in %.2f s (now %s, term %d); restarted, caught up (height within 1 of the leader) %.2f s after restart; longest ack gap %.2f s; %s",
		old.name, term0, elected.Seconds(), nameOf(nl), term1, caught.Seconds(), gap.Seconds(), s.checkLedger(t)))
}

func nameOf(p *proc) string {
	if p == nil {
		return "none"
	}
	return p.name
}

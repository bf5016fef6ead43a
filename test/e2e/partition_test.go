//go:build e2e

package e2e_test

// Faults of one follower's host and disk: a network partition that heals,
// and a block store whose tail is torn while the member is down.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testenv"
)

// tornFields are what the store's torn-tail WARN line says it dropped.
var tornFields = regexp.MustCompile(`"msg":"[^"]*torn tail[^"]*"|"offset":\d+|"bytes":\d+`)

// follower picks a member that is neither the raft leader nor member-a (the
// load's entry), so the load keeps flowing while it is cut off.
func (s *suite) follower(t *testing.T) *proc {
	ld, _ := s.cl.leader()
	if ld == nil {
		t.Fatal("no raft leader known")
	}
	for _, p := range s.cl.members()[1:] {
		if p != ld {
			return p
		}
	}
	t.Fatal("no follower other than the entry member")
	return nil
}

// caughtUp: p is ready and its height is within one block of the leader's.
func (s *suite) caughtUp(p *proc) bool { return s.lagging(p) == "" }

// lagging says why p is not caught up ("" when it is).
func (s *suite) lagging(p *proc) string {
	if err := s.cl.ready(p); err != nil {
		return "not ready: " + trunc(err.Error(), 100)
	}
	ld, _ := s.cl.leader()
	if ld == nil {
		return "no leader known"
	}
	lst, err1 := s.cl.status(ld)
	pst, err2 := s.cl.status(p)
	if err1 != nil || err2 != nil {
		return fmt.Sprintf("status: %v %v", err1, err2)
	}
	if pst.Ledger.Height+1 < lst.Ledger.Height {
		return fmt.Sprintf("height %d, leader %s at %d", pst.Ledger.Height, ld.name, lst.Ledger.Height)
	}
	return ""
}

// relaysUp: every relay connection of p is up.
func (s *suite) relaysUp(p *proc) bool {
	st, err := s.cl.status(p)
	if err != nil || len(st.Relays) == 0 {
		return false
	}
	for _, r := range st.Relays {
		if r.State != "up" {
			return false
		}
	}
	return true
}

// partition cuts a follower's host off the network (everything but
// loopback dropped, both ways, in a table of its own) for cutFor, then
// heals it; the tunnel and the ledger must come back. It prints where the
// time after the heal went (issue #11: ledger back <= 1 s after the
// tunnel): tunnel up, raft contact (the follower's raft commit index
// moves: it accepts the leader's appends or snapshot), raft in step (its
// commit reaches the leader's at contact), the catch-up's figures from
// the follower's log, and caught up (height within one block of the
// leader's).
func (s *suite) partition(cutFor time.Duration) func(*testing.T) {
	return func(t *testing.T) {
		p := s.follower(t)
		cut := "table inet partition {\n" +
			" chain in { type filter hook input priority -10; policy drop; iif lo accept; }\n" +
			" chain out { type filter hook output priority -10; policy drop; oif lo accept; }\n}\n"
		t0 := time.Now()
		if err := p.host.Nft(s.cl.nft, cut); err != nil {
			t.Fatal(err)
		}
		healed := false
		defer func() {
			if !healed {
				p.host.NftOut(s.cl.nft, "delete", "table", "inet", "partition")
			}
		}()
		_, okDown := waitFor(cutFor, func() bool { return !s.relaysUp(p) })
		down := time.Since(t0)
		time.Sleep(cutFor - down)
		var commit0 uint64
		if st, err := s.cl.status(p); err == nil {
			commit0 = st.Ledger.RaftCommit
		}
		logFrom := len(p.output())
		payload0, wire0 := s.fetchedBytes(p)
		raftPayload0, raftWire0 := s.raftBytes(p)
		fwd0, rl0 := s.relayTraffic()
		if out, err := p.host.NftOut(s.cl.nft, "delete", "table", "inet", "partition"); err != nil {
			t.Fatalf("healing: %v: %s", err, out)
		}
		healedAt := time.Now()
		healed = true
		m := s.afterHeal(p, commit0, 60*time.Second)
		if m.tunnel < 0 {
			t.Errorf("%s's relays not up 60 s after the partition healed: %s", p.name, s.pathsNow())
		}
		if m.caughtUp < 0 {
			t.Errorf("%s not caught up 60 s after the partition healed (last seen lagging at %.2f s: %s)", p.name, m.whyUntil.Seconds(), m.why)
		}
		out := p.output()
		if len(out) >= logFrom {
			out = out[logFrom:]
		}
		payload1, wire1 := s.fetchedBytes(p)
		raftPayload1, raftWire1 := s.raftBytes(p)
		fwd1, rl1 := s.relayTraffic()
		fetched := fmt.Sprintf("Deliver answers received: %.1f MB, %.1f MB on the wire; relays forwarded %.1f MB from the heal to caught up (%.1f s), %.0f packets dropped over a member's rate",
			(payload1-payload0)/1e6, (wire1-wire0)/1e6, (fwd1-fwd0)/1e6, time.Since(healedAt).Seconds(), rl1-rl0)
		fetched += fmt.Sprintf("; raft messages received: %.1f MB, %.1f MB on the wire", (raftPayload1-raftPayload0)/1e6, (raftWire1-raftWire0)/1e6)
		if m.tunnel >= 0 && m.contact >= 0 {
			fetched += fmt.Sprintf("; raft contact %.2f s after the tunnel", (m.contact - m.tunnel).Seconds())
		}
		if m.tunnel >= 0 && m.inStep >= 0 {
			fetched += fmt.Sprintf("; raft in step %.2f s after the tunnel", (m.inStep - m.tunnel).Seconds())
		}
		s.record(t, fmt.Sprintf("follower partitioned %v", cutFor), fmt.Sprintf("%s cut off (its relays seen down after %s); after healing: tunnel up %s, raft contact %s, raft in step %s, ledger caught up %s (last seen lagging at %.2f s: %s); %s; %s; %s",
			p.name, secsOr(down, okDown, "never"), m.at(m.tunnel), m.at(m.contact), m.at(m.inStep), m.at(m.caughtUp), m.whyUntil.Seconds(), m.why,
			catchUpBreakdown(out, healedAt), fetched, s.checkLedger(t)))
	}
}

// fetchedBytes reads p's memberd_ledger_fetched_bytes_total: the Deliver
// answers it received from other consenters (catch-up), as payload and as
// wire (compressed) bytes; 0 when not exposed.
func (s *suite) fetchedBytes(p *proc) (payload, wire float64) {
	return s.bytesByKind(p, "memberd_ledger_fetched_bytes_total")
}

// raftBytes reads p's raft_received_bytes_total over its channels: the
// raft messages it received, as payload and as wire (S2-compressed)
// bytes; 0 when not exposed.
func (s *suite) raftBytes(p *proc) (payload, wire float64) {
	return s.bytesByKind(p, "raft_received_bytes_total")
}

// bytesByKind reads p's counter name, summed by its kind label, and
// returns kinds payload and wire (0 when not exposed).
func (s *suite) bytesByKind(p *proc, name string) (payload, wire float64) {
	body, err := s.cl.get(p, "/metrics")
	if err != nil {
		return 0, 0
	}
	m := testenv.MetricSumByLabel(string(body), name, "kind")
	return m["payload"], m["wire"]
}

// relayTraffic sums over the relays the payload bytes forwarded and the
// packets dropped because a member exceeded its rate.
func (s *suite) relayTraffic() (forwarded, rateDrops float64) {
	re := regexp.MustCompile(`(?m)^memberd_relay_dropped_packets_total\{[^}]*reason="rate_limit"[^}]*\} ([0-9.eE+-]+)$`)
	for _, r := range s.cl.procs {
		if !r.relay {
			continue
		}
		if v, _, err := s.metric(r, "relay_forwarded_bytes_total"); err == nil {
			forwarded += v
		}
		if body, err := s.cl.get(r, "/metrics"); err == nil {
			for _, m := range re.FindAllStringSubmatch(string(body), -1) {
				v, _ := strconv.ParseFloat(m[1], 64)
				rateDrops += v
			}
		}
	}
	return forwarded, rateDrops
}

// healMilestones: when each was first seen after the heal (-1: never).
type healMilestones struct {
	tunnel, contact, inStep, caughtUp time.Duration
	why                               string // what held the ledger back, last seen
	whyUntil                          time.Duration
}

func (m healMilestones) at(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// afterHeal polls p (and the leader) until p is caught up or within passes.
// commit0 is p's raft commit index before the heal.
func (s *suite) afterHeal(p *proc, commit0 uint64, within time.Duration) healMilestones {
	m := healMilestones{tunnel: -1, contact: -1, inStep: -1, caughtUp: -1}
	start := time.Now()
	var target uint64 // the leader's commit when p was first in contact
	for time.Since(start) < within {
		now := time.Since(start)
		if m.tunnel < 0 && s.relaysUp(p) {
			m.tunnel = now
		}
		st, err := s.cl.status(p)
		if err == nil && m.contact < 0 && st.Ledger.RaftCommit > commit0 {
			m.contact = now
			if ld, _ := s.cl.leader(); ld != nil && ld != p {
				if lst, err := s.cl.status(ld); err == nil {
					target = lst.Ledger.RaftCommit
				}
			}
		}
		if err == nil && m.contact >= 0 && m.inStep < 0 && st.Ledger.RaftCommit >= target {
			m.inStep = now
		}
		if m.caughtUp < 0 {
			if w := s.lagging(p); w != "" {
				m.why, m.whyUntil = w, time.Since(start)
			} else {
				m.caughtUp = time.Since(start)
			}
		}
		if m.tunnel >= 0 && m.inStep >= 0 && m.caughtUp >= 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m
}

// catchUpBreakdown reads a follower's log since the heal: when its raft
// snapshot came, when its catch-up began and what it fetched at which
// rate, and whether the raft loop had to wait for it.
func catchUpBreakdown(out string, healedAt time.Time) string {
	type line struct {
		Time    time.Time `json:"time"`
		Msg     string    `json:"msg"`
		From    uint64    `json:"from"`
		To      uint64    `json:"to"`
		Blocks  int       `json:"blocks"`
		Bytes   int64     `json:"bytes"`
		TookMS  int64     `json:"took_ms"`
		FirstMS int64     `json:"first_block_ms"`
		StoreMS int64     `json:"storing_ms"`
		Retries int       `json:"retries"`
		Rate    float64   `json:"mb_per_s"`
		Waited  int64     `json:"waited_ms"`
		Queued  uint64    `json:"queued_bytes"`
	}
	at := func(t time.Time) string { return fmt.Sprintf("%.2f s", t.Sub(healedAt).Seconds()) }
	var parts []string
	var blocks int
	var bytes int64
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l line
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch {
		case l.Msg == "raft snapshot installed":
			parts = append(parts, "snapshot "+at(l.Time))
		case l.Msg == "catching up from peers":
			parts = append(parts, fmt.Sprintf("fetch of blocks %d..%d from %s", l.From, l.To, at(l.Time)))
		case l.Msg == "caught up from peers":
			blocks += l.Blocks
			bytes += l.Bytes
			parts = append(parts, fmt.Sprintf("fetched %d blocks, %.1f MB in %.2f s (first block after %.2f s, storing %.2f s, %d retries): %.1f MB/s, done %s",
				l.Blocks, float64(l.Bytes)/1e6, float64(l.TookMS)/1e3, float64(l.FirstMS)/1e3, float64(l.StoreMS)/1e3, l.Retries, l.Rate, at(l.Time)))
		case l.Msg == "raft loop waited for the snapshot's catch-up":
			parts = append(parts, fmt.Sprintf("raft loop waited %.2f s for the catch-up (%.1f MB queued) until %s", float64(l.Waited)/1e3, float64(l.Queued)/1e6, at(l.Time)))
		case l.Msg == "catch-up incomplete; retrying":
			parts = append(parts, "catch-up retried "+at(l.Time))
		case strings.HasPrefix(l.Msg, "raft peer silent"):
			parts = append(parts, "raft connection dropped as silent "+at(l.Time))
		}
	}
	if len(parts) == 0 {
		return "no catch-up in the follower's log"
	}
	return fmt.Sprintf("follower log: %s; in all %d blocks, %.1f MB fetched (relay limit %.1f MB/s per member)",
		strings.Join(parts, ", "), blocks, float64(bytes)/1e6, float64(relayRate)/1e6)
}

// tornTail kills a follower with kill -9, cuts the last bytes of its block
// store (a torn write), restarts it: it must recover the tail, catch up
// and hold every acked envelope.
func (s *suite) tornTail(t *testing.T) {
	p := s.follower(t)
	var store string
	filepath.WalkDir(filepath.Dir(p.config), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "blocks.dat" {
			store = path
		}
		return nil
	})
	if store == "" {
		t.Fatalf("no blocks.dat under %s", filepath.Dir(p.config))
	}
	s.cl.signal(p, syscall.SIGKILL)
	st, err := os.Stat(store)
	if err != nil {
		t.Fatal(err)
	}
	const cut = 100
	if st.Size() < 16+cut {
		t.Fatalf("%s: only %d bytes", store, st.Size())
	}
	if err := os.Truncate(store, st.Size()-cut); err != nil {
		t.Fatal(err)
	}
	s.cl.start(t, p)
	took, ok := waitFor(90*time.Second, func() bool { return s.caughtUp(p) })
	if !ok {
		t.Errorf("%s not caught up 90 s after restarting with a torn block store tail:\n%s", p.name, tail(p.output(), 30))
	}
	// The store says what it dropped (a WARN line of the restarted run).
	line := firstLine(p.output(), "torn tail")
	if line == "" {
		t.Errorf("%s did not log the torn tail it dropped", p.name)
	}
	s.record(t, "block store tail torn while stopped", fmt.Sprintf("%s: last %d of %d bytes of blocks.dat cut after kill -9; restarted and caught up in %.2f s; logged: %s; %s",
		p.name, cut, st.Size(), took.Seconds(), strings.Join(tornFields.FindAllString(line, -1), ","), s.checkLedger(t)))
}

//go:build e2e

package e2e_test

// Faults of one follower's host and disk: a network partition that heals,
// and a block store whose tail is torn while the member is down.

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
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
// heals it; the tunnel and the ledger must come back.
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
		if out, err := p.host.NftOut(s.cl.nft, "delete", "table", "inet", "partition"); err != nil {
			t.Fatalf("healing: %v: %s", err, out)
		}
		healed = true
		tunnel, okTunnel := waitFor(60*time.Second, func() bool { return s.relaysUp(p) })
		if !okTunnel {
			t.Errorf("%s's relays not up 60 s after the partition healed: %s", p.name, s.pathsNow())
		}
		// What held the ledger back, and until when after the heal.
		var why string
		var whyUntil time.Duration
		healedAt := time.Now().Add(-tunnel)
		ledger, okLedger := waitFor(60*time.Second, func() bool {
			if w := s.lagging(p); w != "" {
				why, whyUntil = w, time.Since(healedAt)
				return false
			}
			return true
		})
		if !okLedger {
			t.Errorf("%s not caught up 60 s after the partition healed", p.name)
		}
		s.record(t, fmt.Sprintf("follower partitioned %v", cutFor), fmt.Sprintf("%s cut off (its relays seen down after %s); after healing: tunnel up in %.2f s, ledger caught up in %.2f s (last seen lagging at %.2f s: %s); %s",
			p.name, secsOr(down, okDown, "never"), tunnel.Seconds(), (tunnel+ledger).Seconds(), whyUntil.Seconds(), why, s.checkLedger(t)))
	}
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

//go:build e2e

package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/netnstest"
)

// relaysBlind: while every envelope of the load carries a marker (so it
// crosses the relays member to member: forwarded to the raft leader and
// replicated in blocks to the followers), packet captures on both relay
// hosts must never see it. A positive control (the marker written in clear
// to a relay's port 443 from a member host) shows the capture would.
func (s *suite) relaysBlind(t *testing.T) {
	cl := s.cl
	b := make([]byte, 8)
	rand.Read(b)
	marker := []byte("MEMBERD-E2E-MARKER-" + hex.EncodeToString(b))
	control := []byte("MEMBERD-E2E-CONTROL-" + hex.EncodeToString(b))
	var caps []*netnstest.Capture
	for _, p := range cl.procs {
		if !p.relay {
			continue
		}
		c, err := p.host.Capture(marker, control)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Stop()
		caps = append(caps, c)
	}
	acked0 := s.load.ackedCount()
	s.load.setMarker(string(marker))
	_, ok := waitFor(30*time.Second, func() bool { return s.load.ackedCount() >= acked0+200 })
	s.load.setMarker("")
	if !ok {
		t.Errorf("fewer than 200 marked envelopes acked in 30 s (%d)", s.load.ackedCount()-acked0)
	}
	// Positive control, from member-a's host to relay-1 (its egress allows it).
	conn, err := cl.member(cl.layout.Members[0]).host.DialContext(context.Background(), "tcp", relay1IP+":443")
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(append(control, '\n'))
	time.Sleep(500 * time.Millisecond)
	conn.Close()
	var figs []string
	for i, c := range caps {
		c.Stop()
		frames, bytes, hits := c.Counts()
		figs = append(figs, fmt.Sprintf("relay host %d: %d frames, %d bytes, marker in %d, control in %d", i+1, frames, bytes, hits[0], hits[1]))
		if hits[0] > 0 {
			t.Errorf("the marker sent member to member appeared in clear in %d frames on relay host %d", hits[0], i+1)
		}
		if frames == 0 {
			t.Errorf("the capture on relay host %d saw no frame", i+1)
		}
		if i == 0 && hits[1] == 0 {
			t.Errorf("the capture on relay host 1 missed the control written in clear: it proves nothing")
		}
	}
	s.record(t, "relays see only ciphertext", fmt.Sprintf("%d envelopes with the marker acked; %v; %s",
		s.load.ackedCount()-acked0, figs, s.checkLedger(t)))
}

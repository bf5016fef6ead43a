//go:build e2e

package e2e_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay/wire"
)

// removal: the admins sign policy v2 without member-c (also out of the
// consenters) with `memberd policy sign`, member-a's admin pushes it with
// `memberd policy push` through the tunnel. member-c must be cut off by the
// relays, stay cut off, and the other two must go on ordering. It runs
// last: the consortium has two members afterwards.
func (s *suite) removal(t *testing.T) {
	cl := s.cl
	gone := cl.member(cl.layout.Members[2])
	// v2 also revokes a certificate of member-a's CA (by member and
	// serial): after the push, the relays must refuse it as revoked.
	revoked := s.memberCert(t, "e2e-revoked", time.Now(), time.Hour)
	v2 := s.nextPolicy(t, "v2.yaml", cl.layout.Members, func(d *policy.Document) {
		d.Members = slices.DeleteFunc(d.Members, func(m *policy.Member) bool { return m.ID == gone.name })
		d.Ledger.Consenters = slices.DeleteFunc(d.Ledger.Consenters, func(id string) bool { return id == gone.name })
		d.Revocations.Certificates = append(d.Revocations.Certificates, &policy.RevokedCert{
			Member: cl.layout.Members[0], Serial: revoked.Leaf.SerialNumber.String(), Reason: "e2e: a leaked key"})
	})
	relay := cl.procs[0]
	const relayMetric = "memberd_relay_handshake_failures_total"
	r0, err := s.labelled(relay, relayMetric)
	if err != nil {
		t.Fatal(err)
	}
	entry := cl.member(cl.layout.Members[0])
	t0 := time.Now()
	out, err := s.memberd(entry, "policy", "push", "--admin", entry.admin, v2)
	pushed := time.Since(t0)
	if err != nil {
		t.Errorf("memberd policy push: %v\n%s", err, out)
	}
	cut, okCut := waitFor(30*time.Second, func() bool {
		st, err := cl.status(gone)
		if err != nil {
			return false
		}
		for _, r := range st.Relays {
			if r.State == "up" {
				return false
			}
		}
		return true
	})
	if !okCut {
		t.Errorf("%s still connected to a relay 30 s after its removal was pushed: %s", gone.name, s.pathsNow())
	}
	gone.removed = true
	time.Sleep(3 * time.Second)
	st, _ := cl.status(gone)
	var still string
	if st != nil {
		still = relayPaths(st)
		for _, r := range st.Relays {
			if r.State == "up" {
				t.Errorf("%s reconnected to %s after its removal", gone.name, r.ID)
			}
		}
	}
	acked := s.load.ackedCount()
	resumed, okAck := waitFor(30*time.Second, func() bool { return s.load.ackedCount() > acked })
	if !okAck {
		t.Errorf("no envelope acked by the remaining members 30 s after the removal")
	}
	// The revoked certificate, presented to relay-1 from the attacker host.
	refusedRev := 0
	for range 3 {
		c, err := cl.proxy.DialContext(context.Background(), "tcp", relay1IP+":443")
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}, MinVersion: tls.VersionTLS13,
			Certificates: []tls.Certificate{revoked}})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if tc.Handshake() != nil || closedBy(tc, 5*time.Second) {
			refusedRev++
		}
		tc.Close()
	}
	r1, _ := s.labelled(relay, relayMetric)
	rd, rdesc := deltas(r0, r1)
	if refusedRev != 3 || rd[`{reason="revoked"}`] < 3 {
		t.Errorf("certificate revoked by v2: %d of 3 connections refused, counted %s (want reason revoked)", refusedRev, rdesc)
	}
	cl.checkAlive(t)
	s.record(t, "member removed by a pushed policy", fmt.Sprintf("push took %.2f s; %s cut off by the relays %.2f s after the push began, still cut 3 s later (%s); acks went on %.2f s later; a certificate revoked by the same version: %d/3 refused by %s, counted %s; %s",
		pushed.Seconds(), gone.name, (pushed+cut).Seconds(), still, resumed.Seconds(), refusedRev, relay.name, rdesc, s.checkLedger(t)))
}

// nextPolicy writes version 2 of the genesis policy, changed by edit, to
// name in the test's folder, signed with the admin keys of the members in
// signers, and returns its path.
func (s *suite) nextPolicy(t *testing.T, name string, signers []string, edit func(*policy.Document)) string {
	t.Helper()
	cl := s.cl
	current := filepath.Join(cl.layout.Dir, "genesis.yaml")
	raw, err := os.ReadFile(current)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := policy.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	var d policy.Document
	if err := yaml.Unmarshal(v1.DocumentBytes(), &d); err != nil {
		t.Fatal(err)
	}
	d.Version, d.Previous = 2, v1.Hash().String()
	edit(&d)
	doc, err := policy.MarshalDocument(&d)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cl.dir, name)
	if err := os.WriteFile(path, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range signers {
		out, err := s.memberd(nil, "policy", "sign", "--insecure-file-key", "--key", "file:"+cl.layout.AdminKey[m], "--current", current, path)
		if err != nil {
			t.Fatalf("memberd policy sign (%s): %v\n%s", m, err, out)
		}
	}
	return path
}

// memberd runs the binary (in p's namespace when p is not nil) and returns
// its output.
func (s *suite) memberd(p *proc, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.cl.bin, args...)
	if p != nil {
		cmd = p.host.Command(ctx, s.cl.bin, args...)
	}
	cmd.Env = s.cl.env
	return cmd.CombinedOutput()
}

// rollback runs after removal: on member-b, whose policy is version 2, the
// old version 1 (which still lists the removed member) is dropped into the
// policy folder, first beside version 2 (a replayed bundle), then by an
// attacker with write access who also takes the newer bundles away. The rollback must be refused and counted (policy_rejected_total
// {reason="rollback"}), the member must stay at version 2 and the removed
// member stay cut off.
func (s *suite) rollback(t *testing.T) {
	cl := s.cl
	p := cl.member(cl.layout.Members[1])
	dir := filepath.Join(filepath.Dir(p.config), "policy")
	if v, _, err := s.metric(p, "policy_version"); err != nil || v != 2 {
		t.Fatalf("%s at policy version %v (%v) before the rollback, want 2 (the removal runs first)", p.name, v, err)
	}
	old := readFile(t, filepath.Join(cl.layout.Dir, "genesis.yaml"))
	rollbacks := func() (float64, string) {
		m, err := s.labelled(p, "policy_rejected_total")
		if err != nil {
			return -1, err.Error()
		}
		var all []string
		for k, v := range m {
			all = append(all, fmt.Sprintf("%s=%v", k, v))
		}
		return m[`{reason="rollback"}`], strings.Join(all, " ")
	}
	// First beside the newer bundles: a replayed old bundle.
	r0, _ := rollbacks()
	if err := os.WriteFile(filepath.Join(dir, "replayed.yaml"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	var beside string
	tookBeside, okBeside := waitFor(20*time.Second, func() bool {
		r, d := rollbacks()
		beside = d
		return r >= r0+1
	})
	os.Remove(filepath.Join(dir, "replayed.yaml"))
	if !okBeside {
		t.Errorf("version 1 dropped beside version 2 was not counted as a rollback within 20 s: %s", beside)
	}
	if v, _, err := s.metric(p, "policy_version"); err != nil || v != 2 {
		t.Errorf("%s policy_version %v after the replayed file (err %v), want 2", p.name, v, err)
	}
	// Then with the newer bundles taken away.
	before, err := s.labelled(p, "policy_rejected_total")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	aside := t.TempDir()
	var moved []string
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if pol, err := policy.Parse(raw); err == nil && pol.Version() > 1 {
			if err := os.Rename(filepath.Join(dir, e.Name()), filepath.Join(aside, e.Name())); err != nil {
				t.Fatal(err)
			}
			moved = append(moved, e.Name())
		}
	}
	defer func() {
		for _, n := range moved {
			os.Rename(filepath.Join(aside, n), filepath.Join(dir, n))
		}
	}()
	if len(moved) == 0 {
		t.Fatalf("no bundle of version 2 or later in %s", dir)
	}
	if err := os.WriteFile(filepath.Join(dir, "rollback.yaml"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(filepath.Join(dir, "rollback.yaml"))
	var desc string
	took, ok := waitFor(20*time.Second, func() bool {
		after, err := s.labelled(p, "policy_rejected_total")
		if err != nil {
			return false
		}
		var d map[string]float64
		d, desc = deltas(before, after)
		return d[`{reason="rollback"}`] >= 1
	})
	if !ok {
		t.Errorf("the rollback to version 1 was not counted as reason rollback within 20 s: %s", desc)
	}
	v, _, err := s.metric(p, "policy_version")
	if err != nil || v != 2 {
		t.Errorf("%s policy_version %v after the rollback file (err %v), want 2", p.name, v, err)
	}
	gone := cl.member(cl.layout.Members[2])
	st, _ := cl.status(gone)
	if st != nil {
		for _, r := range st.Relays {
			if r.State == "up" {
				t.Errorf("the removed %s is connected to %s after the rollback file", gone.name, r.ID)
			}
		}
	}
	cl.checkAlive(t)
	s.record(t, "rolled-back policy file", fmt.Sprintf("%s at version 2: version 1 dropped beside it refused and counted (reason rollback) in %.2f s; version 2 bundles taken away and version 1 dropped in: refused and counted in %.2f s (%s); policy_version stays %v; %s still cut off",
		p.name, tookBeside.Seconds(), took.Seconds(), desc, v, gone.name))
}

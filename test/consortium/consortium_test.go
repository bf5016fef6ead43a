// Package consortium_test runs whole consortia on loopback: real relays and
// real appliances (SoftHSM2 identities, signed policy, WireGuard tunnel over
// relay clients), exactly as 'memberd relay' and 'memberd run' wire them,
// in one process through demo.Start.
package consortium_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
)

const echoPort = 7059

// TestConsortium: 2 relays, 3 members. Every member echoes through every
// other; a 100 MB transfer member→member (8 MB under -short) arrives
// byte-exact; the relays' forward hook never sees a plaintext marker sent
// inside the tunnel.
func TestConsortium(t *testing.T) {
	L := initConsortium(t, 3, 2)
	marker := []byte("PLAINTEXT-MARKER-inside-the-tunnel-7f3a")
	var forwarded, seen atomic.Int64
	d := start(t, L, &demo.RunOptions{ForwardHook: func(_, _, _ string, p []byte) {
		forwarded.Add(1)
		if bytes.Contains(p, marker) {
			seen.Add(1)
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := d.ServeEcho(ctx, echoPort); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.CheckAll(ctx, echoPort) {
		if c.Err != nil {
			t.Errorf("%s → %s: %v", c.From, c.To, c.Err)
			continue
		}
		t.Logf("%s → %s via %s (%s): rtt %v", c.From, c.To, c.Relay, c.Path, c.RTT)
	}
	a, b := L.Members[0], L.Members[1]
	x, y := pair(t, ctx, d.Device(a), d.Device(b), b, 7050)
	n := int64(100 << 20)
	if testing.Short() {
		n = 8 << 20
	}
	t0 := time.Now()
	if err := transfer(ctx, x, y, n, 1, nil); err != nil {
		t.Fatal(err)
	}
	el := time.Since(t0)
	t.Logf("%d MB %s → %s in %v: %.1f MB/s", n>>20, a, b, el, float64(n)/el.Seconds()/1e6)

	go x.Write(bytes.Repeat(marker, 300))
	got := make([]byte, 300*len(marker))
	y.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ioReadFull(y, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, marker) {
		t.Fatal("the marker did not arrive")
	}
	if forwarded.Load() == 0 || seen.Load() != 0 {
		t.Fatalf("relays forwarded %d packets, %d holding the plaintext marker", forwarded.Load(), seen.Load())
	}
	t.Logf("relays forwarded %d packets, none holding the plaintext marker", forwarded.Load())
}

// TestRelayClosedMidTransfer: the relay member A sends on stops in the
// middle of a transfer; the TCP connection inside the tunnel survives and
// the transfer completes byte-exact over the other relay.
func TestRelayClosedMidTransfer(t *testing.T) {
	L := initConsortium(t, 3, 2)
	d := start(t, L, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, b := L.Members[0], L.Members[1]
	x, y := pair(t, ctx, d.Device(a), d.Device(b), b, 7050)
	active := ""
	for _, s := range d.RelayStatus(a) {
		if s.Active {
			active = s.ID
		}
	}
	if active == "" {
		t.Fatalf("%s has no active relay: %+v", a, d.RelayStatus(a))
	}
	n := int64(48 << 20)
	if testing.Short() {
		n = 12 << 20
	}
	var stopped atomic.Bool
	stopErr := make(chan error, 1)
	t0 := time.Now()
	err := transfer(ctx, x, y, n, 2, func(got int64) {
		if got > n/4 && stopped.CompareAndSwap(false, true) {
			t.Logf("stopping %s (the active relay of %s) after %d of %d bytes", active, a, got, n)
			go func() { stopErr <- d.StopRelay(active) }()
		}
	})
	if err != nil {
		t.Fatalf("transfer across the relay loss: %v (relays of %s: %+v)", err, a, d.RelayStatus(a))
	}
	if !stopped.Load() {
		t.Fatal("the relay was never stopped")
	}
	if err := <-stopErr; err != nil {
		t.Logf("relay %s stopped with: %v", active, err)
	}
	now := ""
	for _, s := range d.RelayStatus(a) {
		if s.Active {
			now = s.ID
		}
	}
	if now == active || now == "" {
		t.Fatalf("%s still sends on %q after %s stopped", a, now, active)
	}
	t.Logf("%d MB arrived byte-exact in %v; %s now sends on %s", n>>20, time.Since(t0), a, now)
}

// TestUDPBlockedThenBack: with no QUIC answer from the relays (UDP
// blocked) members connect over TLS on TCP, traffic flows; when QUIC
// answers again they move back up to QUIC and traffic still flows.
func TestUDPBlockedThenBack(t *testing.T) {
	L := initConsortium(t, 2, 2)
	for _, m := range L.Members {
		editMemberConfig(t, L, m, func(c map[string]any) {
			c["relay"].(map[string]any)["quic_timeout"] = "300ms"
			c["relay"].(map[string]any)["reprobe_interval"] = "1s"
		})
	}
	gate := make(chan struct{})
	d := start(t, L, &demo.RunOptions{QUICGate: gate})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.ServeEcho(ctx, echoPort); err != nil {
		t.Fatal(err)
	}
	paths := func(want relay.Path) bool {
		for _, m := range L.Members {
			for _, s := range d.RelayStatus(m) {
				if s.State != "up" || s.Path != want {
					return false
				}
			}
		}
		return true
	}
	if !paths(relay.PathTCP) {
		t.Fatalf("want every member on tcp while UDP is blocked: %+v", d.RelayStatus(L.Members[0]))
	}
	check := func() {
		for _, c := range d.CheckAll(ctx, echoPort) {
			if c.Err != nil {
				t.Fatalf("%s → %s: %v", c.From, c.To, c.Err)
			}
			t.Logf("%s → %s via %s (%s): rtt %v", c.From, c.To, c.Relay, c.Path, c.RTT)
		}
	}
	check()
	close(gate)
	waitFor(t, 30*time.Second, "every member back on QUIC", func() bool { return paths(relay.PathQUIC) })
	check()
}

// TestThroughTinyproxy: UDP blocked and a real HTTP CONNECT proxy
// (tinyproxy) configured: members reach the relays through it and each
// other through the tunnel.
func TestThroughTinyproxy(t *testing.T) {
	bin := testenv.Command(t, "tinyproxy", "tinyproxy")
	L := initConsortium(t, 2, 2)
	proxyAddr := startTinyproxy(t, bin, L)
	for _, m := range L.Members {
		editMemberConfig(t, L, m, func(c map[string]any) {
			c["relay"].(map[string]any)["quic_timeout"] = "300ms"
			c["relay"].(map[string]any)["proxy"] = "http://" + proxyAddr
		})
	}
	gate := make(chan struct{}) // never opened: UDP stays blocked
	d := start(t, L, &demo.RunOptions{QUICGate: gate})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, m := range L.Members {
		for _, s := range d.RelayStatus(m) {
			if s.Path != relay.PathProxy {
				t.Fatalf("%s reaches %s on %q, want proxy", m, s.ID, s.Path)
			}
		}
	}
	if err := d.ServeEcho(ctx, echoPort); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.CheckAll(ctx, echoPort) {
		if c.Err != nil {
			t.Fatalf("%s → %s: %v", c.From, c.To, c.Err)
		}
		t.Logf("%s → %s via %s (%s): rtt %v", c.From, c.To, c.Relay, c.Path, c.RTT)
	}
}

// startTinyproxy runs tinyproxy on a free loopback port, allowing CONNECT
// to the relays' ports only; it is killed (by its PID) at cleanup.
func startTinyproxy(t *testing.T, bin string, L *demo.Layout) string {
	t.Helper()
	addr, port := freePort(t)
	var conf strings.Builder
	conf.WriteString("Port " + port + "\nListen 127.0.0.1\nTimeout 600\nMaxClients 50\nAllow 127.0.0.1\nLogLevel Warning\n")
	for _, r := range L.Genesis.Relays() {
		_, rp, _ := strings.Cut(r.Address, ":")
		conf.WriteString("ConnectPort " + rp + "\n")
	}
	dir := t.TempDir()
	cf := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(cf, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-c", cf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("tinyproxy output:\n%s", out.String())
		}
	})
	waitFor(t, 10*time.Second, "tinyproxy listening on "+addr, func() bool {
		c, err := dialTCP(addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// TestNonMemberRefused: a certificate from a CA that is in no policy is
// refused by every relay.
func TestNonMemberRefused(t *testing.T) {
	L := initConsortium(t, 2, 2)
	d := start(t, L, nil)
	_ = d
	var relays []relay.RelayInfo
	for _, r := range L.Genesis.Relays() {
		relays = append(relays, relay.RelayInfo{ID: r.ID, Addr: r.Address, Pin: "sha256/" + base64.StdEncoding.EncodeToString(r.Pin)})
	}
	cl, err := relay.NewClient(relay.ClientConfig{Identity: testpki.SelfSigned(t, "intruder").TLS(),
		Relays: relays, NoEnvProxy: true, QUICTimeout: 500 * time.Millisecond, BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go cl.Run(context.Background()) // until Close
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	if err := cl.WaitReady(ctx); err == nil {
		t.Fatalf("a non-member was admitted: %+v", cl.Status())
	}
	for _, s := range cl.Status() {
		if s.State == "up" || s.LastError == "" {
			t.Fatalf("relay %s: state %s, last error %q", s.ID, s.State, s.LastError)
		}
		t.Logf("relay %s refused the non-member: %s", s.ID, s.LastError)
	}
}

// TestPolicyPushACLAndRemoval: a signed v2 pushed with 'memberd policy
// push' (through member A's admin endpoint and the tunnel) reaches every
// member; it denies member C → member A: that pair cannot connect while the
// others still can. Then v3 removes member C: its open connection inside
// the tunnel is cut, it cannot reach anyone, and the relays drop it.
func TestPolicyPushACLAndRemoval(t *testing.T) {
	L, d, ctx := startEchoing(t, 3, 2, 2*time.Minute)
	a, b, c := L.Members[0], L.Members[1], L.Members[2]
	all := L.Members

	ports := L.Genesis.Document().ACL[0].Ports
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) {
		doc.ACL = []*policy.ACLRule{
			{From: []string{a, b}, To: []string{"*"}, Ports: ports},
			{From: []string{c}, To: []string{b}, Ports: ports},
		}
	}, all...)
	push := func(p *policy.Policy) {
		t.Helper()
		res, err := d.PushPolicy(ctx, a, p.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if !r.OK {
				t.Fatalf("push of v%d to %s: %s", p.Version(), r.Member, r.Detail)
			}
			t.Logf("push v%d: %s: %s", p.Version(), r.Member, r.Detail)
		}
		if err := d.DropRelayPolicy(p.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	push(v2)
	waitFor(t, 20*time.Second, "every member on policy v2", func() bool {
		for _, m := range all {
			if d.PolicyVersion(m) != 2 {
				return false
			}
		}
		return true
	})
	for _, ck := range d.CheckAll(ctx, echoPort) {
		denied := ck.From == c && ck.To == a
		switch {
		case denied && ck.Err == nil:
			t.Errorf("%s → %s connected although the ACL denies it", ck.From, ck.To)
		case !denied && ck.Err != nil:
			t.Errorf("%s → %s: %v", ck.From, ck.To, ck.Err)
		case denied:
			t.Logf("%s → %s refused: %v", ck.From, ck.To, ck.Err)
		}
	}

	// An open connection C ↔ B, then C is removed.
	x := openConn(t, ctx, d, b, c, 7051)
	v3 := nextPolicy(t, L, v2, func(doc *policy.Document) {
		var ms []*policy.Member
		for _, m := range doc.Members {
			if m.ID != c {
				ms = append(ms, m)
			}
		}
		doc.Members = ms
		doc.Ledger.Consenters = []string{a, b}
		doc.ACL = []*policy.ACLRule{{From: []string{"*"}, To: []string{"*"}, Ports: ports}}
	}, a, b, c)
	push(v3)
	waitFor(t, 20*time.Second, "members A and B on policy v3", func() bool {
		return d.PolicyVersion(a) == 3 && d.PolicyVersion(b) == 3
	})
	expectClosed(t, x, "B's connection to removed member C")
	waitFor(t, 10*time.Second, "the relays to drop member C", func() bool {
		for _, s := range d.RelayStatus(c) {
			if s.State == "up" {
				return false
			}
		}
		return true
	})
	expectCutOff(t, ctx, d, c, b, a)
	t.Logf("C's relay status after removal: %+v", d.RelayStatus(c))
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return err != nil && asErr(err, &te) && te.Timeout()
}

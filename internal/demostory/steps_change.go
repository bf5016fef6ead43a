package demostory

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// stepGovernance: policy v2 (the echo port closed) signed by 2 of 3 admins,
// verified, pushed, applied live everywhere; the echo that worked is refused.
func (s *story) stepGovernance(ctx context.Context) (string, error) {
	a, b := s.members[0], s.members[1]
	if err := s.waitFor(ctx, fmt.Sprintf("echo %s → %s:%d through the tunnel before the change (logs %s, %s)", a.name, b.name, echoPort, a.logFile, b.logFile),
		60*time.Second, func(ctx context.Context) (bool, error) { err := echoVia(ctx, s.fwdAddr); return err == nil, err }); err != nil {
		return "", err
	}
	s.detail("before: TCP echo %s → %s overlay port %d through the tunnel works", a.name, b.name, echoPort)
	v2path := filepath.Join(s.dir, "governance", "policy-v2.yaml")
	v2, err := policyV2(s.genesis, v2path)
	if err != nil {
		return "", err
	}
	votes := ""
	for _, signer := range s.L.Members[:2] {
		out, err := s.memberd(ctx, "policy", "sign", "--current", s.genesis, "--key", "file:"+s.L.AdminKey[signer], "--insecure-file-key", v2path)
		if err != nil {
			return "", err
		}
		votes = lineWith(out, "votes so far")
	}
	s.detail("policy v2 %s (ACL: port %d removed) signed by the admins of %s; %s", v2.Hash(), echoPort, strings.Join(s.L.Members[:2], " and "), votes)
	if _, err := s.memberd(ctx, "policy", "verify", "--current", s.genesis, v2path); err != nil {
		return "", fmt.Errorf("v2 does not verify against v1: %w", err)
	}
	pushed := time.Now()
	if _, err := s.memberd(ctx, "policy", "push", "--admin", a.admin, v2path); err != nil {
		return "", err
	}
	all := append(append([]*proc{}, s.members...), s.relays...)
	if err := s.waitFor(ctx, "policy v2 applied on every member and relay", 90*time.Second, func(ctx context.Context) (bool, error) {
		var behind []string
		for _, p := range all {
			st, err := p.status(ctx)
			if err != nil {
				return false, err
			}
			if v := max(st.Policy.Version, st.PolicyVersion); v != v2.Version() {
				behind = append(behind, fmt.Sprintf("%s at v%d (log %s)", p.name, v, p.logFile))
			}
		}
		if len(behind) > 0 {
			return false, errors.New(strings.Join(behind, ", "))
		}
		return true, nil
	}); err != nil {
		return "", err
	}
	applied := time.Since(pushed)
	s.detail("pushed with memberd policy push; v%d on %d members and %d relays (/status) %v after the push", v2.Version(), len(s.members), len(s.relays), applied.Round(10*time.Millisecond))
	deniedBefore := s.aclDenied(ctx, a, b)
	if err := s.waitFor(ctx, fmt.Sprintf("echo %s → %s:%d refused under v2", a.name, b.name, echoPort), 60*time.Second, func(ctx context.Context) (bool, error) {
		if err := echoVia(ctx, s.fwdAddr); err != nil {
			return true, nil
		}
		return false, errors.New("the echo still works")
	}); err != nil {
		return "", err
	}
	// And stays refused while the rest of the tunnel works.
	if err := echoVia(ctx, s.fwdAddr); err == nil {
		return "", errors.New("the echo through the closed port worked again under v2")
	}
	if _, err := ping(ctx, a, b.name); err != nil {
		return "", fmt.Errorf("after v2, ping %s → %s fails too (the tunnel, not only the port): %w", a.name, b.name, err)
	}
	denied := s.aclDenied(ctx, a, b) - deniedBefore
	if denied == 0 {
		return "", fmt.Errorf("the echo failed, but neither %s nor %s counted an ACL denial (/status tunnel.acl_denied): not the policy's doing? (logs %s, %s)", a.name, b.name, a.logFile, b.logFile)
	}
	s.detail("after: the same echo is refused (tunnel ACL denials +%d on %s/%s), ping %s → %s still answers", denied, a.name, b.name, a.name, b.name)
	return fmt.Sprintf("v2 signed 2/3, applied on %d+%d in %v; port %d refused", len(s.members), len(s.relays), applied.Round(10*time.Millisecond), echoPort), nil
}

func (s *story) aclDenied(ctx context.Context, ps ...*proc) uint64 {
	var n uint64
	for _, p := range ps {
		if st, err := p.status(ctx); err == nil {
			n += st.Tunnel.ACLDenied
		}
	}
	return n
}

func lineWith(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// stream is traffic the story keeps up during the relay kill; the time of
// every success is kept. A serial stream calls try back to back (20 ms
// apart); a paced one starts a try every 20 ms whatever the earlier ones do
// (at most 64 in flight), so that a lost ping does not hide the pause
// behind its timeout: the longest pause between answers is then the outage.
type stream struct {
	what  string                          // "ping member-a → member-b"
	need  int                             // successes wanted before and after the kill
	paced bool                            // a try every 20 ms, not one after the other
	try   func(ctx context.Context) error // one ping, one transaction

	mu      sync.Mutex // guards the fields below
	replies []time.Time
	lost    int
	lastErr string // the last failure, for the story's detail line
}

func (ps *stream) run(ctx context.Context) {
	if !ps.paced {
		for ctx.Err() == nil {
			ps.once(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	inflight := make(chan struct{}, 64)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case inflight <- struct{}{}:
		default:
			continue // 64 unanswered: the pause shows in the answers anyway
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-inflight }()
			ps.once(ctx)
		}()
	}
}

func (ps *stream) once(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := ps.try(tctx)
	cancel()
	now := time.Now()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if err == nil {
		ps.replies = append(ps.replies, now)
	} else if ctx.Err() == nil {
		ps.lost++
		ps.lastErr = err.Error()
	}
}

// around counts the successes after t; gap is the longest pause between two
// successes that ends after t, the one spanning t included (or the silence
// from the last success to now when none came after t).
func (ps *stream) around(t time.Time) (after int, gap time.Duration, lost int) {
	ps.mu.Lock()
	replies := slices.Clone(ps.replies)
	lost = ps.lost
	ps.mu.Unlock()
	slices.SortFunc(replies, time.Time.Compare) // paced answers come in any order
	var prev time.Time
	for _, r := range replies {
		if r.After(t) {
			after++
		}
		if !prev.IsZero() && r.Sub(prev) > gap && r.After(t) {
			gap = r.Sub(prev)
		}
		prev = r
	}
	if after == 0 && !prev.IsZero() {
		gap = time.Since(prev)
	}
	return after, gap, lost
}

// stepFailover: the relay member-a sends on is killed (kill -9) while pings
// flow from member-a to the others and transactions go to member-a's
// ledger; the traffic moves to the other relay. The relay is then started
// again and the members reconnect to it.
func (s *story) stepFailover(ctx context.Context) (string, error) {
	a := s.members[0]
	st, err := a.status(ctx)
	if err != nil {
		return "", err
	}
	inUse, _ := st.activeRelay()
	victim := s.byName[inUse]
	if victim == nil || !victim.relay {
		return "", fmt.Errorf("%s /status names no relay in use", a.name)
	}
	var streams []*stream
	for _, m := range s.members[1:] {
		streams = append(streams, &stream{what: fmt.Sprintf("ping %s → %s (one every 20 ms)", a.name, m.name), need: 20, paced: true,
			try: func(ctx context.Context) error { _, err := ping(ctx, a, m.name); return err }})
	}
	tx := 0
	streams = append(streams, &stream{what: "ledger submit to " + a.name + " (one process per transaction)", need: 3, try: func(ctx context.Context) error {
		tx++
		args := append([]string{"ledger", "submit"}, s.ledgerFlags(a)...)
		out, err := s.memberd(ctx, append(args, "--data", fmt.Sprintf("failover transaction %d", tx))...)
		if err == nil && !strings.HasPrefix(strings.TrimSpace(out), "SUCCESS") {
			err = fmt.Errorf("answered %q", strings.TrimSpace(out))
		}
		return err
	}})
	tctx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, ps := range streams {
		wg.Add(1)
		go func() { defer wg.Done(); ps.run(tctx) }()
	}
	defer func() { stopTraffic(); wg.Wait() }()
	enough := func(since time.Time) error {
		for _, ps := range streams {
			if n, _, _ := ps.around(since); n < ps.need {
				return fmt.Errorf("%s: %d of %d answers so far", ps.what, n, ps.need)
			}
		}
		return nil
	}
	// Traffic flows first.
	if err := s.waitFor(ctx, "traffic flowing before the kill", 60*time.Second, func(context.Context) (bool, error) {
		err := enough(time.Time{})
		return err == nil, err
	}); err != nil {
		return "", err
	}
	leader := st.ledger().Leader
	killedAt := time.Now()
	pid := victim.signal(syscall.SIGKILL, 10*time.Second)
	s.detail("%s sends on %s: kill -9 %d while pinging %d members and submitting transactions", a.name, victim.name, pid, len(s.members)-1)
	// The traffic continues on the other relay.
	var other string
	if err := s.waitFor(ctx, fmt.Sprintf("traffic from %s moved off %s (log %s)", a.name, victim.name, a.logFile), 90*time.Second, func(ctx context.Context) (bool, error) {
		if err := enough(killedAt); err != nil {
			return false, err
		}
		st, err := a.status(ctx)
		if err != nil {
			return false, err
		}
		id, path := st.activeRelay()
		if id == "" || id == victim.name {
			return false, fmt.Errorf("%s /status: relay in use %q", a.name, id)
		}
		other = id + " (" + path + ")"
		return true, nil
	}); err != nil {
		return "", err
	}
	stopTraffic()
	wg.Wait()
	var pingGap, txGap time.Duration
	pingsLost := 0
	for _, ps := range streams {
		after, gap, lost := ps.around(killedAt)
		if ps.paced {
			pingGap = max(pingGap, gap)
			pingsLost += lost
		} else {
			txGap = gap
		}
		why := ""
		if lost > 0 {
			ps.mu.Lock()
			why = " (last: " + firstLine(ps.lastErr) + ")"
			ps.mu.Unlock()
		}
		s.detail("%s: %d answers after the kill; longest pause between answers %v; %d failed%s", ps.what, after, gap.Round(time.Millisecond), lost, why)
	}
	if st, err = a.status(ctx); err == nil {
		s.detail("traffic on %s now; raft leader %s before the kill, %s after", other, leader, st.ledger().Leader)
	}
	var copies []string
	for _, m := range s.members {
		copies = append(copies, fmt.Sprintf("%s %s", m.name, s.metric(ctx, m, "memberd_relay_client_backup_copies_total")))
	}
	s.detail("packets copied to the backup relay while %s was quiet: %s", victim.name, strings.Join(copies, ", "))
	// The relay comes back; the members reconnect to it.
	restarted := time.Now()
	if err := victim.start(s.o.Bin, s.env); err != nil {
		return "", err
	}
	if err := s.waitFor(ctx, fmt.Sprintf("every member connected to %s again (log %s)", victim.name, victim.logFile), 90*time.Second, func(ctx context.Context) (bool, error) {
		for _, m := range s.members {
			st, err := m.status(ctx)
			if err != nil {
				return false, err
			}
			for _, r := range st.Relays {
				if r.ID == victim.name && r.State != "up" {
					return false, fmt.Errorf("%s sees %s %s", m.name, victim.name, r.State)
				}
			}
		}
		return true, nil
	}); err != nil {
		return "", err
	}
	s.detail("%s started again: every member connected to it %v later", victim.name, time.Since(restarted).Round(100*time.Millisecond))
	return fmt.Sprintf("%s killed; traffic on %s; longest gap: ping %v (%d lost), tx ack %v", victim.name, other, pingGap.Round(time.Millisecond), pingsLost, txGap.Round(time.Millisecond)), nil
}

// stepRotate: member-c's identity key rotated with HSM tooling, no restart.
func (s *story) stepRotate(ctx context.Context) (string, error) {
	c := s.members[2]
	mdir := filepath.Join(s.cons, "members", c.name)
	st, err := c.status(ctx)
	if err != nil {
		return "", err
	}
	oldSerial, oldExpiry := st.Identity.Serial, st.Identity.NotAfter
	c.mu.Lock()
	pid := c.cmd.Process.Pid
	c.mu.Unlock()
	pinRaw, err := os.ReadFile(filepath.Join(mdir, "pin"))
	if err != nil {
		return "", err
	}
	pin := strings.TrimSpace(string(pinRaw))
	label := "identity-2"
	// 1. A new key pair in the member's token, with the HSM's own tool.
	if _, err := s.command(ctx, "pkcs11-tool", "--module", s.module, "--token-label", c.name, "--login", "--pin", pin,
		"--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", "5302"); err != nil {
		return "", err
	}
	uri := fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", c.name, label, s.module, filepath.Join(mdir, "pin"))
	// 2. A CSR signed by that key, 3. the member CA signs it.
	rot := filepath.Join(s.dir, "rotation")
	if err := os.MkdirAll(rot, 0o755); err != nil {
		return "", err
	}
	overlay, err := s.overlayIP(c.name)
	if err != nil {
		return "", err
	}
	csr, certOut := filepath.Join(rot, c.name+"-2.csr"), filepath.Join(rot, c.name+"-2.pem")
	if _, err := s.memberd(ctx, "hsm", "csr", "--key", uri, "--cn", c.name+"-appliance-2", "--org", c.name, "--ou", "orderer",
		"--ip", "127.0.0.1", "--ip", overlay, "--dns", "localhost", "--out", csr); err != nil {
		return "", err
	}
	if _, err := s.memberd(ctx, "ca", "sign", "--key", "file:"+filepath.Join(mdir, "ca-key.pem"), "--insecure-file-key",
		"--ca-cert", filepath.Join(mdir, "ca.pem"), "--csr", csr, "--days", "730", "--out", certOut); err != nil {
		return "", err
	}
	newCert, err := firstCert(certOut)
	if err != nil {
		return "", err
	}
	newSerial := newCert.SerialNumber.String()
	// 4. The key URI into identity.yaml, the certificate into the folder
	// (each written beside and renamed in: the watcher never sees half a file).
	idDir := filepath.Join(mdir, "identity")
	if err := addIdentityKey(filepath.Join(idDir, "identity.yaml"), uri); err != nil {
		return "", err
	}
	certPEM, err := os.ReadFile(certOut)
	if err != nil {
		return "", err
	}
	if err := writeRename(filepath.Join(idDir, "cert-2.pem"), certPEM); err != nil {
		return "", err
	}
	dropped := time.Now()
	a := s.members[0]
	if err := s.waitFor(ctx, fmt.Sprintf("%s using the new certificate (serial %s) for identity, tunnel and ledger (log %s)", c.name, shortSerial(newSerial), c.logFile),
		90*time.Second, func(ctx context.Context) (bool, error) {
			st, err := c.status(ctx)
			if err != nil {
				return false, err
			}
			if st.Identity.Serial != newSerial || st.Tunnel.CertificateSerial != newSerial {
				return false, fmt.Errorf("identity serial %s, tunnel %s", shortSerial(st.Identity.Serial), shortSerial(st.Tunnel.CertificateSerial))
			}
			if l := st.ledger(); l.CertificateSerial != "" && l.CertificateSerial != newSerial {
				return false, fmt.Errorf("ledger signs with %s", shortSerial(l.CertificateSerial))
			}
			sa, err := a.status(ctx)
			if err != nil {
				return false, err
			}
			for _, p := range sa.Tunnel.Peers {
				if p.Member == c.name && p.CertificateSerial != newSerial {
					return false, fmt.Errorf("%s sees %s attested by %s", a.name, c.name, shortSerial(p.CertificateSerial))
				}
			}
			return true, nil
		}); err != nil {
		return "", err
	}
	took := time.Since(dropped)
	c.mu.Lock()
	samePID := c.cmd.Process.Pid == pid
	c.mu.Unlock()
	if !samePID || !c.running() {
		return "", fmt.Errorf("%s restarted or stopped during the rotation (log %s)", c.name, c.logFile)
	}
	st, _ = c.status(ctx)
	s.detail("pkcs11-tool --keypairgen (%s in token %s), memberd hsm csr, memberd ca sign, cert-2.pem dropped into %s", label, c.name, idDir)
	s.detail("%s: serial %s → %s, expiry %s → %s, in use by identity, tunnel attestation and ledger %v after the drop; pid %d unchanged",
		c.name, shortSerial(oldSerial), shortSerial(newSerial), oldExpiry.UTC().Format(time.DateOnly), st.Identity.NotAfter.UTC().Format(time.DateOnly), took.Round(10*time.Millisecond), pid)
	if err := s.waitFor(ctx, fmt.Sprintf("ping %s → %s after the rotation", a.name, c.name), 30*time.Second,
		func(ctx context.Context) (bool, error) { _, err := ping(ctx, a, c.name); return err == nil, err }); err != nil {
		return "", err
	}
	fig, err := s.order(ctx, c, 3, "after-rotation")
	if err != nil {
		return "", fmt.Errorf("ledger after the rotation: %w", err)
	}
	// The newest block member-c stores is signed with the new key, and its
	// ledger endpoint presents the new certificate.
	h := s.heights["after-rotation"]
	signer, err := blockSigner(filepath.Join(s.dir, "blocks", fmt.Sprintf("after-rotation-%d", h), c.name, fmt.Sprintf("%d.block", h-1)))
	if err != nil {
		return "", err
	}
	if signer.SerialNumber.String() != newSerial {
		return "", fmt.Errorf("block %d on %s is signed by %q serial %s, not the new certificate %s (log %s)", h-1, c.name, signer.Subject, shortSerial(signer.SerialNumber.String()), shortSerial(newSerial), c.logFile)
	}
	tlsCert, err := presentedCert(ctx, c.ledgerAddr)
	if err != nil {
		return "", err
	}
	if tlsCert.SerialNumber.String() != newSerial {
		return "", fmt.Errorf("%s's ledger endpoint %s presents serial %s, not the new certificate %s (log %s)", c.name, c.ledgerAddr, shortSerial(tlsCert.SerialNumber.String()), shortSerial(newSerial), c.logFile)
	}
	s.detail("block %d as %s stores it is signed by %s (serial %s); its ledger TLS presents the same certificate", h-1, c.name, signer.Subject, shortSerial(newSerial))
	return fmt.Sprintf("%s serial %s → %s, no restart; tunnel ok; %s", c.name, shortSerial(oldSerial), shortSerial(newSerial), fig), nil
}

func (s *story) overlayIP(member string) (string, error) {
	raw, err := os.ReadFile(s.genesis)
	if err != nil {
		return "", err
	}
	p, err := policy.Parse(raw)
	if err != nil {
		return "", err
	}
	m := p.Member(member)
	if m == nil {
		return "", fmt.Errorf("%s: no member %s", s.genesis, member)
	}
	return m.OverlayIP, nil
}

func firstCert(path string) (*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(b.Bytes)
}

// addIdentityKey appends uri to the keys of identity.yaml.
func addIdentityKey(path, uri string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var f struct {
		Key  string   `yaml:"key,omitempty"`
		Keys []string `yaml:"keys"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f.Keys = append(f.Keys, uri)
	out, err := yaml.Marshal(&f)
	if err != nil {
		return err
	}
	return writeRename(path, out)
}

// writeRename writes path through a temporary file in the same folder
// (a dot file the identity watcher ignores) and a rename.
func writeRename(path string, b []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// shortSerial shows a decimal serial as its first hex digits.
func shortSerial(dec string) string {
	n, ok := new(big.Int).SetString(dec, 10)
	if !ok {
		return dec
	}
	h := n.Text(16)
	if len(h) > 8 {
		h = h[:8] + "…"
	}
	return h
}

// blockSigner returns the certificate of the (first) orderer signature of
// a block file.
func blockSigner(path string) (*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sigs, err := block.Signatures(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	_, cert, err := block.CreatorCertificate(sigs[0].Identity)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}

// presentedCert returns the certificate a TLS server presents (not
// verified: only read, to see which one is in use).
func presentedCert(ctx context.Context, addr string) (*x509.Certificate, error) {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TLS to the ledger at %s: %w", addr, err)
	}
	defer conn.Close()
	tc, ok := conn.(*tls.Conn)
	if !ok || len(tc.ConnectionState().PeerCertificates) == 0 {
		return nil, fmt.Errorf("the ledger at %s presented no certificate", addr)
	}
	return tc.ConnectionState().PeerCertificates[0], nil
}

// metric returns the value of a metric without labels from p's /metrics
// ("?" when it cannot be read).
func (s *story) metric(ctx context.Context, p *proc, name string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/metrics", nil)
	if err != nil {
		return "?"
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return "?"
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

package demostory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// echoPort is the overlay port of member-b's echo service, which member-a
// reaches through a forward; policy v2 closes it.
const echoPort = 7058

// stepUp: the consortium comes up, each member on a relay path.
func (s *story) stepUp(ctx context.Context) (string, error) {
	if err := s.setup(ctx); err != nil {
		return "", err
	}
	for _, p := range s.relays {
		if err := p.start(s.o.Bin, s.env); err != nil {
			return "", err
		}
	}
	for _, p := range s.relays {
		if err := s.waitFor(ctx, p.name+" /healthz (log "+p.logFile+")", 60*time.Second, func(ctx context.Context) (bool, error) {
			return get(ctx, p.admin, "/healthz", nil) == nil, nil
		}); err != nil {
			return "", err
		}
	}
	for _, p := range s.members {
		if err := p.start(s.o.Bin, s.env); err != nil {
			return "", err
		}
	}
	paths := map[string]int{}
	for _, p := range s.members {
		var st *status
		err := s.waitFor(ctx, p.name+" ready with a raft leader and a relay (log "+p.logFile+")", 180*time.Second, func(ctx context.Context) (bool, error) {
			if err := get(ctx, p.admin, "/readyz", nil); err != nil {
				return false, err
			}
			var err error
			if st, err = p.status(ctx); err != nil {
				return false, err
			}
			if st.ledger().Leader == "" {
				return false, errors.New("no raft leader yet")
			}
			if id, _ := st.activeRelay(); id == "" {
				return false, errors.New("no relay in use yet")
			}
			return true, nil
		})
		if err != nil {
			return "", err
		}
		id, path := st.activeRelay()
		paths[path+" via "+id]++
		var others []string
		for _, r := range st.Relays {
			if !r.Active {
				others = append(others, fmt.Sprintf("%s %s %s", r.ID, r.State, r.Path))
			}
		}
		s.detail("%-9s %-4s via %s (rtt %v); standby: %s; ledger leader %s", p.name, path, id,
			time.Duration(statusRTT(st, id)).Round(10*time.Microsecond), strings.Join(others, ", "), st.ledger().Leader)
	}
	// Every member reaches every other through the tunnel.
	pairs := 0
	for _, a := range s.members {
		for _, b := range s.members {
			if a == b {
				continue
			}
			if err := s.waitFor(ctx, fmt.Sprintf("ping %s → %s through the tunnel (logs %s, %s)", a.name, b.name, a.logFile, b.logFile), 60*time.Second,
				func(ctx context.Context) (bool, error) { _, err := ping(ctx, a, b.name); return err == nil, err }); err != nil {
				return "", err
			}
			pairs++
		}
	}
	var ps []string
	for k, n := range paths {
		ps = append(ps, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Strings(ps)
	return fmt.Sprintf("%d relays, %d members (%s); ping ok %d/%d pairs", len(s.relays), len(s.members), strings.Join(ps, ", "), pairs, pairs), nil
}

func statusRTT(st *status, relay string) int64 {
	for _, r := range st.Relays {
		if r.ID == relay {
			return r.RTT
		}
	}
	return 0
}

// stepLedger: transactions submitted, blocks identical everywhere.
func (s *story) stepLedger(ctx context.Context) (string, error) {
	return s.order(ctx, s.members[0], 5, "ledger")
}

// order submits n envelopes to member to with `memberd ledger submit`, then
// waits until every member holds the same height with all n ordered,
// fetches every block from every member with `memberd ledger fetch`
// (which verifies hashes and signatures) and compares them.
func (s *story) order(ctx context.Context, to *proc, n int, tag string) (string, error) {
	h0, err := s.maxHeight(ctx)
	if err != nil {
		return "", err
	}
	for i := range n {
		args := append([]string{"ledger", "submit"}, s.ledgerFlags(to)...)
		out, err := s.memberd(ctx, append(args, "--data", fmt.Sprintf("%s transaction %d of %d, %s", tag, i+1, n, time.Now().Format(time.RFC3339Nano)))...)
		if err != nil {
			return "", err
		}
		if !strings.HasPrefix(strings.TrimSpace(out), "SUCCESS") {
			return "", fmt.Errorf("ledger submit to %s answered %q (read %s)", to.name, strings.TrimSpace(out), filepath.Join(s.logs, "commands.log"))
		}
	}
	var height uint64
	var headHash []byte
	var blocks int
	err = s.waitFor(ctx, fmt.Sprintf("%d envelopes in identical blocks on every member", n), 120*time.Second, func(ctx context.Context) (bool, error) {
		hs := map[uint64]bool{}
		for _, p := range s.members {
			st, err := p.status(ctx)
			if err != nil {
				return false, err
			}
			hs[st.ledger().Height] = true
			height = st.ledger().Height
		}
		if len(hs) != 1 || height <= h0 {
			return false, fmt.Errorf("heights %v (before: %d)", keys(hs), h0)
		}
		var ref [][]byte
		count := 0
		for i, p := range s.members {
			dir := filepath.Join(s.dir, "blocks", fmt.Sprintf("%s-%d", tag, height), p.name)
			args := append([]string{"ledger", "fetch", "--from", "0", "--to", fmt.Sprint(height - 1), "--out", dir, "--policy", s.genesis}, s.ledgerFlags(p)...)
			if _, err := s.memberd(ctx, args...); err != nil {
				return false, err
			}
			hashes, envs, err := readBlocks(dir, height, h0)
			if err != nil {
				return false, stopError{err}
			}
			if i == 0 {
				ref, count = hashes, envs
				continue
			}
			for j := range ref {
				if !bytes.Equal(ref[j], hashes[j]) {
					return false, stopError{fmt.Errorf("block %d differs: %s has header hash %x, %s has %x (blocks in %s)",
						j, s.members[0].name, ref[j][:8], p.name, hashes[j][:8], filepath.Dir(dir))}
				}
			}
		}
		if count < n {
			return false, fmt.Errorf("%d of %d envelopes ordered yet", count, n)
		}
		headHash, blocks = ref[len(ref)-1], int(height-h0)
		return true, nil
	})
	if err != nil {
		return "", err
	}
	s.heights[tag] = height
	s.detail("%d envelopes submitted to %s (memberd ledger submit) → %d new block(s); blocks 0..%d fetched from all %d members (memberd ledger fetch: verified), header hashes identical, head %x",
		n, to.name, blocks, height-1, len(s.members), headHash[:8])
	return fmt.Sprintf("%d tx → %d block(s); height %d identical on %d members", n, blocks, height, len(s.members)), nil
}

// ledgerFlags are the `memberd ledger` flags for p's own client identity
// (a key file: demo only) and ledger address.
func (s *story) ledgerFlags(p *proc) []string {
	mdir := filepath.Join(s.cons, "members", p.name)
	msp := filepath.Join(mdir, "client", "msp")
	return []string{"--orderer", p.ledgerAddr, "--channel", "demo", "--msp-id", p.name + "MSP",
		"--cert", filepath.Join(msp, "signcerts", "cert.pem"), "--key", "file:" + filepath.Join(msp, "keystore", "key.pem"),
		"--insecure-file-key", "--tls-ca", filepath.Join(mdir, "ca.pem"), "--timeout", "30s"}
}

// readBlocks reads dir/0.block..dir/<height-1>.block and returns their
// header hashes and the number of envelopes in the blocks from 'from' on.
func readBlocks(dir string, height, from uint64) ([][]byte, int, error) {
	var hashes [][]byte
	envs := 0
	for i := uint64(0); i < height; i++ {
		raw, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%d.block", i)))
		if err != nil {
			return nil, 0, err
		}
		b, err := block.Unmarshal(raw)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", filepath.Join(dir, fmt.Sprintf("%d.block", i)), err)
		}
		hashes = append(hashes, block.HeaderHash(b.Header))
		if i >= from {
			envs += len(b.GetData().GetData())
		}
	}
	return hashes, envs, nil
}

func (s *story) maxHeight(ctx context.Context) (uint64, error) {
	var h uint64
	for _, p := range s.members {
		st, err := p.status(ctx)
		if err != nil {
			return 0, fmt.Errorf("%s /status: %w", p.name, err)
		}
		h = max(h, st.ledger().Height)
	}
	return h, nil
}

func keys(m map[uint64]bool) []uint64 {
	var out []uint64
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// ping asks from's admin endpoint for one ICMP echo to member through the
// tunnel.
func ping(ctx context.Context, from *proc, member string) (time.Duration, error) {
	var a struct {
		RTT   time.Duration `json:"rtt_ns"`
		Error string        `json:"error"`
	}
	if err := get(ctx, from.admin, "/ping?member="+member+"&timeout=1s", &a); err != nil {
		var he *httpError
		if errors.As(err, &he) && he.code == http.StatusGatewayTimeout {
			return 0, fmt.Errorf("ping %s → %s: no reply within 1 s", from.name, member)
		}
		return 0, err
	}
	return a.RTT, nil
}

// echoServer is the LAN service behind member-b's overlay port echoPort.
type echoServer struct {
	ln   net.Listener
	addr string
}

func startEcho() (*echoServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &echoServer{ln: ln, addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return e, nil
}

func (e *echoServer) close() { _ = e.ln.Close() }

// echoVia sends a line to addr (member-a's forward) and expects it back.
func echoVia(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: 3 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	msg := []byte("hello through the tunnel\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("no echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// policyV2 writes version 2 of the genesis policy with echoPort removed
// from every ACL rule (unsigned).
func policyV2(genesis, out string) (*policy.Policy, error) {
	raw, err := os.ReadFile(genesis)
	if err != nil {
		return nil, err
	}
	gen, err := policy.Parse(raw)
	if err != nil {
		return nil, err
	}
	d := *gen.Document()
	d.Version = gen.Version() + 1
	d.Previous = gen.Hash().String()
	d.Description = fmt.Sprintf("memberd demo consortium, version %d: overlay port %d (the echo service) closed", d.Version, echoPort)
	d.ACL = nil
	for _, r := range gen.Document().ACL {
		nr := *r
		nr.Ports = nil
		for _, pr := range r.Ports {
			switch {
			case !pr.Contains(echoPort):
				nr.Ports = append(nr.Ports, pr)
			default:
				if pr.Lo < echoPort {
					nr.Ports = append(nr.Ports, policy.PortRange{Lo: pr.Lo, Hi: echoPort - 1})
				}
				if pr.Hi > echoPort {
					nr.Ports = append(nr.Ports, policy.PortRange{Lo: echoPort + 1, Hi: pr.Hi})
				}
			}
		}
		if len(nr.Ports) > 0 {
			d.ACL = append(d.ACL, &nr)
		}
	}
	b, err := policy.MarshalDocument(&d)
	if err != nil {
		return nil, err
	}
	p, err := policy.Parse(b)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, err
	}
	return p, os.WriteFile(out, b, 0o644)
}

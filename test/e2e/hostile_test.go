//go:build e2e

package e2e_test

// Hostile TLS clients against a relay and a member's ledger listener, and
// bad Broadcast envelopes against a member's ledger: each refused, counted
// by reason, the connection closed, and nothing of it ordered.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/orderer"
	"github.com/memberd/memberd/relay/wire"
)

// labelled returns the samples of a metric on p's /metrics by label set
// ({reason="x"} -> value).
func (s *suite) labelled(p *proc, name string) (map[string]float64, error) {
	body, err := s.cl.get(p, "/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	re := regexp.MustCompile(`^` + name + `(\{[^}]*\})? ([0-9.eE+-]+)$`)
	for _, l := range strings.Split(string(body), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			out[m[1]] = v
		}
	}
	return out, nil
}

// deltas is after - before, for the label sets that grew, sorted.
func deltas(before, after map[string]float64) (map[string]float64, string) {
	d := map[string]float64{}
	var keys []string
	for k, v := range after {
		if v > before[k] {
			d[k] = v - before[k]
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b []string
	for _, k := range keys {
		b = append(b, fmt.Sprintf("%s+%v", k, d[k]))
	}
	return d, strings.Join(b, " ")
}

// memberCert is a TLS client certificate from member-a's CA.
func (s *suite) memberCert(t *testing.T, cn string, now time.Time, validity time.Duration) tls.Certificate {
	cert, key := issueClientCert(t, s.cl, cn, now, validity)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// closedBy reports whether the peer closed c (EOF, reset or a TLS alert)
// within d.
func closedBy(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

// hostileTLS: from the attacker host, TLS clients relay-1 must refuse, each
// kind repeatedly (no certificate, a self-signed one, an expired one from a
// member CA, a valid one followed by a garbage first frame, plain garbage,
// and more silent connections from one address than the per-source limit);
// and against member-b's LAN ledger listener (from inside its host):
// garbage, HTTP, TLS 1.2 only, a silent connection. Each must be closed by
// the server and counted by reason; no process dies; the load goes on.
func (s *suite) hostileTLS(t *testing.T) {
	cl := s.cl
	relay := cl.procs[0]
	target := relay1IP + ":443"
	attacker := cl.proxy
	ledger := cl.member(cl.layout.Members[1])
	const relayMetric = "memberd_relay_handshake_failures_total"
	const ledgerMetric = "memberd_ledger_tls_handshake_failures_total"
	rBefore, err := s.labelled(relay, relayMetric)
	if err != nil {
		t.Fatal(err)
	}
	lBefore, err := s.labelled(ledger, ledgerMetric)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := s.memberCert(t, "e2e-attacker-good", now, time.Hour)
	expired := s.memberCert(t, "e2e-attacker-expired", now.Add(-48*time.Hour), time.Hour)
	stranger := testpki.SelfSigned(t, "e2e-stranger").TLS() // of no member CA
	a0 := s.load.ackedCount()
	t0 := time.Now()

	type attempt struct {
		name   string
		n      int
		closed atomic.Int64
		try    func(c net.Conn) bool // true when the server closed c
	}
	tlsTry := func(cert *tls.Certificate, after []byte) func(net.Conn) bool {
		return func(c net.Conn) bool {
			cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{wire.ALPN}, MinVersion: tls.VersionTLS13}
			if cert != nil {
				cfg.Certificates = []tls.Certificate{*cert}
			}
			tc := tls.Client(c, cfg)
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			if err := tc.Handshake(); err != nil {
				return true // refused during the handshake
			}
			if after != nil {
				tc.Write(after)
			}
			return closedBy(tc, 5*time.Second)
		}
	}
	garbage := make([]byte, 512)
	rand.Read(garbage)
	relayAttempts := []*attempt{
		{name: "no certificate", n: 10, try: tlsTry(nil, nil)},
		{name: "self-signed", n: 10, try: tlsTry(&stranger, nil)},
		{name: "expired (member CA)", n: 10, try: tlsTry(&expired, nil)},
		{name: "valid cert, garbage frame", n: 10, try: tlsTry(&good, garbage)},
		{name: "garbage bytes", n: 10, try: func(c net.Conn) bool { c.Write(garbage); return closedBy(c, 5*time.Second) }},
	}
	var wg sync.WaitGroup
	for _, a := range relayAttempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range a.n {
				c, err := attacker.DialContext(context.Background(), "tcp", target)
				if err != nil {
					continue
				}
				if a.try(c) {
					a.closed.Add(1)
				}
				c.Close()
			}
		}()
	}
	// More silent connections from one address than the relay's
	// per-source limit (16 in progress): the excess is refused at once,
	// the rest closed at the handshake deadline (3 s). After the kinds
	// above, which the flood would otherwise refuse as over the limit.
	wg.Wait()
	var silentClosed atomic.Int64
	const silent = 40
	for range silent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := attacker.DialContext(context.Background(), "tcp", target)
			if err != nil {
				return
			}
			defer c.Close()
			if closedBy(c, 8*time.Second) {
				silentClosed.Add(1)
			}
		}()
	}
	// The ledger's LAN listener (loopback inside member-b's host).
	ledgerAttempts := []*attempt{
		{name: "garbage bytes", n: 5, try: func(c net.Conn) bool { c.Write(garbage); return closedBy(c, 5*time.Second) }},
		{name: "HTTP/1.1", n: 5, try: func(c net.Conn) bool {
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			return closedBy(c, 5*time.Second)
		}},
		{name: "TLS 1.2 only", n: 5, try: func(c net.Conn) bool {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			return tc.Handshake() != nil
		}},
		{name: "silent", n: 2, try: func(c net.Conn) bool { return closedBy(c, 20*time.Second) }},
	}
	for _, a := range ledgerAttempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var inner sync.WaitGroup
			for range a.n {
				inner.Add(1)
				go func() {
					defer inner.Done()
					c, err := ledger.host.DialContext(context.Background(), "tcp", ledger.ledger)
					if err != nil {
						return
					}
					defer c.Close()
					if a.try(c) {
						a.closed.Add(1)
					}
				}()
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	took := time.Since(t0)
	acked := s.load.ackedCount() - a0

	var figs []string
	for _, a := range relayAttempts {
		if a.closed.Load() != int64(a.n) {
			t.Errorf("relay: %s: %d of %d connections not closed by the relay", a.name, int64(a.n)-a.closed.Load(), a.n)
		}
		figs = append(figs, fmt.Sprintf("%s %d/%d closed", a.name, a.closed.Load(), a.n))
	}
	if silentClosed.Load() != silent {
		t.Errorf("relay: %d of %d silent connections still open after 8 s", silent-silentClosed.Load(), silent)
	}
	figs = append(figs, fmt.Sprintf("silent %d/%d closed", silentClosed.Load(), silent))
	for _, a := range ledgerAttempts {
		if a.closed.Load() != int64(a.n) {
			t.Errorf("ledger: %s: %d of %d connections not closed by %s", a.name, int64(a.n)-a.closed.Load(), a.n, ledger.name)
		}
		figs = append(figs, fmt.Sprintf("ledger %s %d/%d closed", a.name, a.closed.Load(), a.n))
	}
	rAfter, err := s.labelled(relay, relayMetric)
	if err != nil {
		t.Fatal(err)
	}
	rd, rdesc := deltas(rBefore, rAfter)
	for _, reason := range []string{"no_certificate", "unknown_ca", "expired", "bad_frame", "tls_error", "over_limit_source", "timeout"} {
		if rd[`{reason="`+reason+`"}`] == 0 {
			t.Errorf("relay: no %s{reason=%q} counted: %s", relayMetric, reason, rdesc)
		}
	}
	lAfter, err := s.labelled(ledger, ledgerMetric)
	if err != nil {
		t.Fatal(err)
	}
	ld, ldesc := deltas(lBefore, lAfter)
	for _, reason := range []string{"tls_error", "timeout"} {
		if ld[`{listener="lan",reason="`+reason+`"}`] == 0 {
			t.Errorf("ledger: no %s{listener=\"lan\",reason=%q} counted: %s", ledgerMetric, reason, ldesc)
		}
	}
	if acked == 0 {
		t.Errorf("no envelope acked during the %v of hostile TLS", took.Round(time.Second))
	}
	cl.checkAlive(t)
	s.record(t, "hostile TLS to a relay and a ledger listener", fmt.Sprintf("%v; relay counted %s; ledger counted %s; %d envelopes acked meanwhile (%.1f s); %s",
		strings.Join(figs, ", "), rdesc, ldesc, acked, took.Seconds(), s.checkLedger(t)))
}

// badEnvelopes: member-b's ledger gets, on one Broadcast stream, envelopes
// that are garbage, truncated, unsigned, signed by another key than the
// certificate's, for another channel, and larger than the channel allows.
// Each must be refused (garbage, truncated, unsigned: BAD_REQUEST) and none
// may be ordered: no block of any member holds their marker.
func (s *suite) badEnvelopes(t *testing.T) {
	cl := s.cl
	p := cl.member(cl.layout.Members[1])
	l := s.load
	marker := fmt.Sprintf("E2E-BAD-ENVELOPE-%d", time.Now().UnixNano())
	valid := func(data string) *common.Envelope {
		env, _, err := orderer.NewTransaction(l.id, l.channel, []byte(marker+" "+data), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	garbage := make([]byte, 300)
	rand.Read(garbage)
	truncated := valid("truncated")
	truncated.Payload = truncated.Payload[:len(truncated.Payload)/2]
	unsigned := valid("unsigned")
	unsigned.Signature = nil
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, _, err := orderer.NewTransaction(orderer.Identity{MSPID: l.id.MSPID, Cert: l.id.Cert, Signer: otherKey}, l.channel, []byte(marker+" forged"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wrongChannel, _, err := orderer.NewTransaction(l.id, "no-such-channel", []byte(marker+" channel"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	oversized := valid("oversized " + strings.Repeat("x", 11<<20))
	cases := []struct {
		name string
		env  *common.Envelope
		want []common.Status
	}{
		{"garbage", &common.Envelope{Payload: garbage, Signature: garbage[:70]}, []common.Status{common.Status_BAD_REQUEST}},
		{"empty", &common.Envelope{}, []common.Status{common.Status_BAD_REQUEST}},
		{"truncated", truncated, []common.Status{common.Status_BAD_REQUEST}},
		{"unsigned", unsigned, []common.Status{common.Status_BAD_REQUEST, common.Status_FORBIDDEN}},
		{"forged signature", forged, []common.Status{common.Status_FORBIDDEN, common.Status_BAD_REQUEST}},
		{"other channel", wrongChannel, []common.Status{common.Status_NOT_FOUND, common.Status_BAD_REQUEST}},
		{"oversized (11 MiB; the channel allows 10)", oversized, []common.Status{common.Status_REQUEST_ENTITY_TOO_LARGE, common.Status_BAD_REQUEST}},
	}
	// Nothing sent from here on can be in a block below the lowest height
	// now: the scan for them starts there (the chain is long by now).
	from := uint64(0)
	for i, m := range cl.members() {
		st, err := cl.status(m)
		if err != nil {
			t.Fatal(err)
		}
		if h := st.Ledger.Height; i == 0 || h < from {
			from = h
		}
	}
	from = max(from, 1) - 1
	cc, err := l.conn(p)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bs, err := ab.NewAtomicBroadcastClient(cc).Broadcast(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var figs []string
	for _, c := range cases {
		if err := bs.Send(c.env); err != nil {
			t.Fatalf("%s: send: %v", c.name, err)
		}
		resp, err := bs.Recv()
		if err != nil {
			t.Fatalf("%s: no answer, the stream broke: %v", c.name, err)
		}
		ok := false
		for _, w := range c.want {
			ok = ok || resp.Status == w
		}
		if !ok {
			t.Errorf("%s: answered %s (%s), want one of %v", c.name, resp.Status, trunc(resp.Info, 120), c.want)
		}
		figs = append(figs, fmt.Sprintf("%s %s", c.name, resp.Status))
	}
	// The stream still works: a good envelope after the bad ones is ordered.
	good := valid("good")
	if err := bs.Send(good); err != nil {
		t.Fatal(err)
	}
	resp, err := bs.Recv()
	if err != nil || resp.Status != common.Status_SUCCESS {
		t.Errorf("a valid envelope after the bad ones: %v %v", resp.GetStatus(), err)
	}
	// Replayed: the same signed envelope again, on this stream and on a
	// fresh one to another member. Refused as a duplicate, told clearly,
	// ordered once.
	var replays []string
	for i, to := range []*proc{p, cl.member(cl.layout.Members[0])} {
		var rs ab.AtomicBroadcast_BroadcastClient = bs
		if i > 0 {
			rc, err := l.conn(to)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if rs, err = ab.NewAtomicBroadcastClient(rc).Broadcast(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := rs.Send(good); err != nil {
			t.Fatalf("replay to %s: send: %v", to.name, err)
		}
		resp, err := rs.Recv()
		if err != nil {
			t.Fatalf("replay to %s: no answer: %v", to.name, err)
		}
		if resp.Status != common.Status_BAD_REQUEST || !strings.Contains(resp.Info, "duplicate") {
			t.Errorf("replayed envelope to %s answered %s %q, want BAD_REQUEST naming the duplicate", to.name, resp.Status, trunc(resp.Info, 160))
		}
		replays = append(replays, fmt.Sprintf("replay to %s %s %q", to.name, resp.Status, trunc(resp.Info, 80)))
		if i > 0 {
			rs.CloseSend()
		}
	}
	figs = append(figs, replays...)
	bs.CloseSend()
	// The scans below read every member's chain up to its height a moment
	// after the replays, so that a replay ordered after the original would
	// be seen.
	time.Sleep(2 * time.Second)
	goodEnv, _ := block.ParseEnvelope(mustMarshal(good))
	// Nothing bad ordered: scan every member's chain up to the good one.
	var scanned []string
	for _, m := range cl.members() {
		mc, err := l.conn(m)
		if err != nil {
			t.Fatal(err)
		}
		st, err := cl.status(m)
		if err != nil {
			t.Fatal(err)
		}
		found, bad, blocks := 0, 0, 0
		fctx, fcancel := context.WithTimeout(context.Background(), 60*time.Second)
		ferr := orderer.Fetch(fctx, ab.NewAtomicBroadcastClient(mc), l.id, l.channel,
			orderer.SeekRange(from, st.Ledger.Height-1, ab.SeekInfo_BLOCK_UNTIL_READY), func(b *common.Block) error {
				blocks++
				for _, raw := range b.GetData().GetData() {
					if !bytes.Contains(raw, []byte(marker)) {
						continue
					}
					if e, err := block.ParseEnvelope(raw); err == nil && e.TxID() == goodEnv.TxID() {
						found++
					} else {
						bad++
					}
				}
				return nil
			})
		fcancel()
		mc.Close()
		if found == 0 {
			t.Errorf("%s: the valid envelope sent after the bad ones is not in its %d blocks (%v)", m.name, blocks, ferr)
		}
		if found > 1 {
			t.Errorf("%s: the replayed envelope was ordered %d times", m.name, found)
		}
		if bad > 0 {
			t.Errorf("%s: %d refused envelopes were ordered", m.name, bad)
		}
		scanned = append(scanned, fmt.Sprintf("%s blocks %d-%d, %d bad, valid one %d time(s)", m.name, from, from+uint64(blocks)-1, bad, found))
	}
	cl.checkAlive(t)
	s.record(t, "bad and replayed Broadcast envelopes", fmt.Sprintf("%s; stream still usable (valid envelope SUCCESS); none ordered, the replayed one once (%s); %s",
		strings.Join(figs, ", "), strings.Join(scanned, "; "), s.checkLedger(t)))
}

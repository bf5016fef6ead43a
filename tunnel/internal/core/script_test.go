package core

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// The scripts in testdata/*.txt drive a Core, in the style of etcd raft's
// data-driven tests: each block is a command line, "----", and the output
// it must produce, ended by a blank line. Run with -rewrite to store the
// output the code gives now (then review the diff).
//
// Commands (keys and members are short names; a key's attestation is
// printed att(name)):
//
//	init member=b self=b1 [keepalive=25s] [ack-timeout=10s] [request-interval=1s] a=10.0.0.1 ...
//	recv from=a key=a1 [flags=active,request,have,defer] [ttl=48h] [signer=s]
//	ack from=a key=b2 [flags=defer]
//	announce [request] [missing]
//	advance 1s            move the clock (no event)
//	tick | expire | rotate-tick | rotate-end | switch-failed
//	policy a=10.0.0.1 ... [revoke=a1,c2]
//	rotate next=b2
//	first-packet from=a
//	handshakes a2 c2
//	config-failed from=a
//	resign self=b1 [next=b2]
//	peers                 dump the peer state
var rewrite = flag.Bool("rewrite", false, "rewrite testdata/*.txt with the output the code gives now")

func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScript(t, f) })
	}
}

type block struct {
	line     int
	cmd      string
	expected string
}

// parseScript reads the blocks of a script; lines before a command
// starting with # are comments, kept on rewrite.
func parseScript(t *testing.T, text string) (blocks []block, comments map[int][]string) {
	lines := strings.Split(text, "\n")
	comments = map[int][]string{}
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" {
			continue
		}
		if strings.HasPrefix(l, "#") {
			comments[len(blocks)] = append(comments[len(blocks)], l)
			continue
		}
		b := block{line: i + 1, cmd: l}
		i++
		if i >= len(lines) || lines[i] != "----" {
			t.Fatalf("line %d: want ---- after command %q", b.line, l)
		}
		var exp []string
		for i++; i < len(lines) && lines[i] != ""; i++ {
			exp = append(exp, lines[i])
		}
		b.expected = strings.Join(exp, "\n")
		blocks = append(blocks, b)
	}
	return blocks, comments
}

func runScript(t *testing.T, path string) {
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blocks, comments := parseScript(t, string(text))
	s := &script{now: time.Unix(1_800_000_000, 0).UTC()}
	var out strings.Builder
	for i, b := range blocks {
		got := s.run(t, b.cmd)
		if !*rewrite && got != b.expected {
			t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", path, b.line, b.cmd, got, b.expected)
		}
		for _, c := range comments[i] {
			out.WriteString(c + "\n")
		}
		fmt.Fprintf(&out, "%s\n----\n%s\n\n", b.cmd, got)
	}
	for _, c := range comments[len(blocks)] {
		out.WriteString(c + "\n")
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type script struct {
	c   *Core
	now time.Time
}

func key(name string) Key {
	var k Key
	copy(k[:], name)
	return k
}

func name(k Key) string { return string(bytes.TrimRight(k[:], "\x00")) }

func own(n string, gen string) Own {
	return Own{Private: key("priv-" + n), Public: key(n), Raw: []byte("att(" + n + gen + ")")}
}

func args(t *testing.T, fields []string) map[string]string {
	m := map[string]string{}
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}

func dur(t *testing.T, s, def string) time.Duration {
	if s == "" {
		s = def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func flags(s string) uint8 {
	var f uint8
	for _, n := range strings.Split(s, ",") {
		switch n {
		case "active":
			f |= FlagActive
		case "request":
			f |= FlagRequest
		case "have":
			f |= FlagHaveYours
		case "defer":
			f |= FlagDefer
		}
	}
	return f
}

func flagNames(f uint8) string {
	var n []string
	for _, x := range []struct {
		f    uint8
		name string
	}{{FlagActive, "active"}, {FlagRequest, "request"}, {FlagHaveYours, "have"}, {FlagDefer, "defer"}} {
		if f&x.f != 0 {
			n = append(n, x.name)
		}
	}
	if len(n) == 0 {
		return "next"
	}
	return strings.Join(n, ",")
}

// members reads a=10.0.0.1 arguments.
func members(t *testing.T, a map[string]string) map[string]netip.Addr {
	out := map[string]netip.Addr{}
	for k, v := range a {
		if addr, err := netip.ParseAddr(v); err == nil {
			out[k] = addr
		}
	}
	return out
}

func (s *script) run(t *testing.T, cmd string) string {
	f := strings.Fields(cmd)
	a := args(t, f[1:])
	var ev Event
	switch f[0] {
	case "init":
		s.c = New(Config{
			Member:             a["member"],
			Keepalive:          dur(t, a["keepalive"], "25s"),
			RotationAckTimeout: dur(t, a["ack-timeout"], "10s"),
			RequestInterval:    dur(t, a["request-interval"], "1s"),
		}, own(a["self"], ""), members(t, a))
		return "ok"
	case "advance":
		s.now = s.now.Add(dur(t, f[1], ""))
		return "now +" + s.now.Sub(time.Unix(1_800_000_000, 0)).String()
	case "peers":
		return s.peers()
	case "recv":
		ttl := dur(t, a["ttl"], "48h")
		signer := a["signer"]
		if signer == "" {
			signer = "id-" + a["from"]
		}
		att := &Att{Member: a["from"], Key: key(a["key"]), NotBefore: s.now, Expiry: s.now.Add(ttl), Signer: signer}
		ev = Received{From: a["from"], Flags: flags(a["flags"]), Att: att}
	case "ack":
		ev = AckReceived{From: a["from"], Flags: flags(a["flags"]), Key: key(a["key"])}
	case "announce":
		_, r := a["request"]
		_, m := a["missing"]
		ev = Announce{Request: r, OnlyMissing: m}
	case "tick":
		ev = Tick{}
	case "expire":
		ev = Expire{}
	case "rotate-tick":
		ev = RotateTick{}
	case "rotate-end":
		ev = RotateEnd{}
	case "switch-failed":
		ev = SwitchFailed{}
	case "policy":
		revoked := map[string]bool{}
		for _, k := range strings.Split(a["revoke"], ",") {
			revoked[k] = true
		}
		ev = Policy{Members: members(t, a), Accepts: func(att *Att) bool { return !revoked[name(att.Key)] }}
	case "rotate":
		ev = RotateStart{Next: own(a["next"], "")}
	case "first-packet":
		ev = FirstPacket{Member: a["from"]}
	case "handshakes":
		hs := map[Key]bool{}
		for _, k := range f[1:] {
			hs[key(k)] = true
		}
		ev = Handshakes{Keys: hs}
	case "config-failed":
		ev = ConfigFailed{Member: a["from"]}
	case "resign":
		e := Resigned{Self: own(a["self"], "'")}
		if n := a["next"]; n != "" {
			o := own(n, "'")
			e.Next = &o
		}
		ev = e
	default:
		t.Fatalf("unknown command %q", cmd)
	}
	out, err := s.c.Step(ev, s.now)
	return format(out, err)
}

func (s *script) peers() string {
	var b strings.Builder
	fmt.Fprintf(&b, "self %s", name(s.c.self.Public))
	if r := s.c.rot; r != nil {
		fmt.Fprintf(&b, " next %s phase %d acks %s", name(r.next.Public), r.phase, strings.Join(sortedSet(r.acks), ","))
	}
	for _, p := range s.c.Peers() {
		fmt.Fprintf(&b, "\n%s addr=%s", p.Member, p.Addr)
		if p.Active != nil {
			fmt.Fprintf(&b, " active=%s", name(p.Active.Key))
		}
		if p.Pending != nil {
			fmt.Fprintf(&b, " pending=%s", name(p.Pending.Key))
		}
		pp := s.c.peers[p.Member]
		if pp.knowsUs {
			b.WriteString(" knows-us")
		}
		if p.Ready {
			b.WriteString(" ready")
		}
		if pp.defers {
			b.WriteString(" defers")
		}
		if !pp.switched.IsZero() {
			b.WriteString(" switched")
		}
	}
	for _, k := range sortedKeys(s.c.kaDue) {
		fmt.Fprintf(&b, "\nkeepalive-due %s at +%s", name(k), s.c.kaDue[k].Sub(s.now))
	}
	for _, k := range sortedKeys(s.c.retiring) {
		fmt.Fprintf(&b, "\nretiring %s at +%s", name(k), s.c.retiring[k].Sub(s.now))
	}
	return b.String()
}

func sortedSet(m map[string]bool) []string {
	var out []string
	for k, v := range m {
		if v {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func format(o Output, err error) string {
	var l []string
	add := func(f string, a ...any) { l = append(l, fmt.Sprintf(f, a...)) }
	if err != nil {
		add("error: %v (refused %v)", err, errors.Is(err, ErrRefused))
	}
	for _, p := range o.Promoted {
		add("promoted %s %s -> %s on %s", p.Member, name(p.Old), name(p.New), p.Why)
	}
	if len(o.Pause) > 0 {
		var ks []string
		for _, k := range o.Pause {
			ks = append(ks, name(k))
		}
		add("pause %s max=%s", strings.Join(ks, " "), o.PauseMax)
	}
	if o.Private != nil {
		add("private %s", strings.TrimPrefix(name(*o.Private), "priv-"))
	}
	for _, op := range o.Config {
		switch op.Op {
		case OpSet:
			allowed := "none"
			if op.Addr.IsValid() {
				allowed = op.Addr.String()
			}
			add("config set %s endpoint=%s allowed=%s keepalive=%d", name(op.Key), op.Member, allowed, op.Keepalive)
		case OpKeepalive:
			add("config keepalive %s %d", name(op.Key), op.Keepalive)
		case OpRemove:
			add("config remove %s", name(op.Key))
		}
	}
	if o.Changed {
		add("changed")
	}
	for _, m := range o.Send {
		payload := string(m.Payload)
		if m.Kind == KindAck {
			add("send %s ack %s flags=%s", m.To, name(Key(m.Payload)), flagNames(m.Flags))
			continue
		}
		add("send %s announce %s flags=%s", m.To, payload, flagNames(m.Flags))
	}
	for _, x := range o.Accepted {
		add("accepted %s %s active=%v", x.Member, name(x.Att.Key), x.Active)
	}
	for _, x := range o.ReAttested {
		add("re-attested %s %s signer=%s", x.Member, name(x.Att.Key), x.Att.Signer)
	}
	for _, m := range o.Expired {
		add("expired %s", m)
	}
	for _, m := range o.Removed {
		add("removed %s", m)
	}
	for _, m := range o.Replaced {
		add("replaced %s (restart)", m)
	}
	for _, m := range o.Rekeyed {
		add("rekeyed %s", m)
	}
	for _, m := range o.Unanswered {
		add("request from %s not answered (rate limit)", m)
	}
	if o.Switched != nil {
		add("switched %s -> %s", name(o.Switched.Old), name(o.Switched.New))
	}
	if len(o.AckMissing) > 0 {
		add("switching without acks from %s", strings.Join(o.AckMissing, ","))
	}
	if o.TurnTimeout != "" {
		add("switching while %s's rotation is unfinished", o.TurnTimeout)
	}
	if o.Waiting {
		add("waiting")
	}
	if o.Poll {
		add("poll handshakes")
	}
	if len(l) == 0 {
		return "(nothing)"
	}
	return strings.Join(l, "\n")
}

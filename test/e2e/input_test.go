//go:build e2e

package e2e_test

// Scenarios about what users and files get wrong: a proxy with basic auth
// (right and wrong password), broken policy files, config typos.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/policy"
)

const (
	proxyUser = "e2e"
	proxyPass = "right-Pa55word" // what the proxy accepts
	wrongPass = "wr0ng-Secret-xyz"
)

// startProxy runs an HTTP CONNECT proxy with basic auth on the proxy host,
// listening on proxyIP:8888: squid when installed (.ci/run installs it),
// else tinyproxy. It returns the proxy's name and the status it answers a
// wrong password with (squid 407; tinyproxy 1.11 answers 401, not 407).
func (s *suite) startProxy(t *testing.T) (name string, wrongStatus int) {
	dir := t.TempDir()
	// squid's auth helper runs as user proxy: it must read the password file.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	var args []string
	if squid, err := exec.LookPath("squid"); err == nil {
		hash, err := exec.Command("openssl", "passwd", "-apr1", proxyPass).Output()
		if err != nil {
			t.Fatalf("openssl passwd: %v", err)
		}
		write(t, filepath.Join(dir, "passwd"), proxyUser+":"+strings.TrimSpace(string(hash))+"\n")
		write(t, filepath.Join(dir, "squid.conf"), fmt.Sprintf(`http_port %s:8888
auth_param basic program /usr/lib/squid/basic_ncsa_auth %s
auth_param basic realm memberd-e2e
acl authed proxy_auth REQUIRED
acl tls_port port 443
http_access deny CONNECT !tls_port
http_access allow authed
http_access deny all
cache deny all
cache_mem 8 MB
pid_filename %s
cache_log %s
access_log stdio:%s
coredump_dir %s
`, proxyIP, filepath.Join(dir, "passwd"), filepath.Join(dir, "squid.pid"), filepath.Join(dir, "cache.log"),
			filepath.Join(dir, "access.log"), dir))
		name, wrongStatus, args = "squid", 407, []string{squid, "-N", "-f", filepath.Join(dir, "squid.conf")}
	} else {
		bin := testenv.Command(t, "tinyproxy", "tinyproxy")
		write(t, filepath.Join(dir, "tinyproxy.conf"), fmt.Sprintf(`Port 8888
Listen %s
Timeout 600
MaxClients 100
Allow 10.77.0.0/24
ConnectPort 443
BasicAuth %s %s
LogLevel Info
`, proxyIP, proxyUser, proxyPass))
		name, wrongStatus, args = "tinyproxy", 401, []string{bin, "-d", "-c", filepath.Join(dir, "tinyproxy.conf")}
	}
	p := &proc{name: name, host: s.cl.proxy, argv: args}
	s.cl.procs = append(s.cl.procs, p)
	s.cl.start(t, p)
	if _, ok := waitFor(20*time.Second, func() bool {
		c, err := s.cl.proxy.DialContext(context.Background(), "tcp", proxyIP+":8888")
		if err == nil {
			c.Close()
		}
		return err == nil
	}); !ok {
		cl, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
		t.Fatalf("%s not listening on %s:8888 after 20 s:\n%s\n%s", name, proxyIP, p.output(), cl)
	}
	return name, wrongStatus
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// proxyOnly: member-c's host may only reach the proxy. With a wrong proxy
// password it must say 407 without showing the password; with the right
// one it is ready.
func (s *suite) proxyOnly(t *testing.T) {
	cl := s.cl
	proxyName, wrongStatus := s.startProxy(t)
	proxyWrong := regexp.MustCompile(fmt.Sprintf(`(?i)proxy.*\b%d\b|\b%d\b.*proxy`, wrongStatus, wrongStatus))
	p := cl.member(cl.layout.Members[2])
	cl.signal(p, syscall.SIGTERM)
	if err := p.host.Nft(cl.nft, corporateRules(true)); err != nil {
		t.Fatal(err)
	}
	setProxy := func(pass string) {
		editYAML(t, p.config, func(m map[string]any) {
			r, _ := m["relay"].(map[string]any)
			if r == nil {
				r = map[string]any{}
				m["relay"] = r
			}
			r["proxy"] = fmt.Sprintf("http://%s:%s@%s:8888", proxyUser, pass, proxyIP)
		})
	}

	setProxy(wrongPass)
	cl.start(t, p)
	var line string
	took407, ok := waitFor(30*time.Second, func() bool {
		line = firstMatch(p.output(), proxyWrong)
		return line != ""
	})
	out := p.output()
	cl.signal(p, syscall.SIGTERM)
	if !ok {
		t.Errorf("no %d from %s in %s's output 30 s after start with a wrong proxy password:\n%s", wrongStatus, proxyName, p.name, tail(out, 20))
	}
	if strings.Contains(out, wrongPass) {
		t.Errorf("%s's output shows the proxy password:\n%s", p.name, firstLine(out, wrongPass))
	}
	if i := strings.Index(line, "proxy http"); i >= 0 {
		line = line[i:]
	}
	if len(line) > 160 {
		line = line[:160] + "..."
	}

	setProxy(proxyPass)
	cl.start(t, p)
	ready, okReady := waitFor(60*time.Second, func() bool {
		if cl.ready(p) != nil {
			return false
		}
		st, err := cl.status(p)
		if err != nil {
			return false
		}
		for _, r := range st.Relays {
			if r.State != "up" {
				return false
			}
		}
		return true
	})
	if !okReady {
		t.Errorf("%s not ready through the proxy 60 s after start: %s", p.name, s.pathsNow())
	}
	st, _ := cl.status(p)
	paths := ""
	if st != nil {
		paths = relayPaths(st)
	}
	if strings.Contains(p.output(), proxyPass) {
		t.Errorf("%s's output shows the proxy password", p.name)
	}
	s.record(t, "proxy only ("+proxyName+", basic auth)", fmt.Sprintf("wrong password: %d reported %.2f s after start, password masked: %q; right password: ready %.2f s after start (%s); %s",
		wrongStatus, took407.Seconds(), line, ready.Seconds(), paths, s.checkLedger(t)))
}

// firstMatch returns the first line of s that re matches.
func firstMatch(s string, re *regexp.Regexp) string {
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) {
			return l
		}
	}
	return ""
}

// firstLine returns the first line of s containing sub.
func firstLine(s, sub string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			return sc.Text()
		}
	}
	return ""
}

// metric sums the samples of a metric (any labels) on p's /metrics.
func (s *suite) metric(p *proc, name string) (float64, string, error) {
	body, err := s.cl.get(p, "/metrics")
	if err != nil {
		return 0, "", err
	}
	var sum float64
	var lines []string
	re := regexp.MustCompile(`^(\w*` + name + `)(\{[^}]*\})? ([0-9.eE+-]+)$`)
	for _, l := range strings.Split(string(body), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			v, _ := strconv.ParseFloat(m[3], 64)
			sum += v
			lines = append(lines, m[1]+m[2]+" "+m[3])
		}
	}
	return sum, strings.Join(lines, " "), nil
}

// badPolicyFiles: garbage, truncated, forged, unsigned and under-signed bundles dropped
// into member-b's policy folder are rejected and counted; the member keeps
// policy version 1 and keeps running.
func (s *suite) badPolicyFiles(t *testing.T) {
	cl := s.cl
	p := cl.member(cl.layout.Members[1])
	dir := filepath.Join(filepath.Dir(p.config), "policy")
	good, err := os.ReadFile(filepath.Join(dir, "genesis.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	before, _, err := s.metric(p, "policy_rejected_total")
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 4096)
	rand.Read(garbage)
	// A well-formed next version (version 2, previous = v1's hash) whose
	// signatures are v1's: they do not sign these bytes.
	v1, err := policy.Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	v2 := bytes.Replace(good, []byte("\nversion: 1\n"), []byte("\nversion: 2\nprevious: "+v1.Hash().String()+"\n"), 1)
	unsigned := v2
	if i := bytes.Index(v2, []byte("#--- memberd signatures")); i > 0 {
		unsigned = v2[:i]
	}
	// Version 2 signed by one admin of three: under the quorum.
	under := s.nextPolicy(t, "undersigned.yaml", cl.layout.Members[:1], func(*policy.Document) {})
	files := map[string][]byte{
		"undersigned.yaml": readFile(t, under),
		"garbage.yaml":     garbage,
		"truncated.yaml":   good[:len(good)/2],
		"forged.yaml":      v2, // version 2 with version 1's signatures
		"unsigned.yaml":    unsigned,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(filepath.Join(dir, name))
	}
	var after float64
	var detail string
	took, ok := waitFor(20*time.Second, func() bool {
		after, detail, _ = s.metric(p, "policy_rejected_total")
		return after-before >= float64(len(files))
	})
	if !ok {
		t.Errorf("%d bad policy files counted %v times in policy_rejected_total after 20 s (want >= %d): %s", len(files), after-before, len(files), detail)
	}
	// The forged and unsigned files are well formed: they must fail on
	// their signatures, not on parsing.
	if !strings.Contains(detail, `reason="quorum"`) {
		t.Errorf("no rejection for missing signatures (reason quorum): %s", detail)
	}
	version, _, err := s.metric(p, "policy_version")
	if err != nil || version != 1 {
		t.Errorf("%s policy_version %v after bad files (err %v), want 1", p.name, version, err)
	}
	if err := cl.ready(p); err != nil {
		t.Errorf("%s not ready after bad policy files: %v", p.name, err)
	}
	s.record(t, "broken policy files", fmt.Sprintf("%d files (garbage, truncated, forged, unsigned, signed by 1 admin of 3) rejected and counted in %.2f s: %s; policy_version stays %v",
		len(files), took.Seconds(), detail, version))
}

// configTypos: a typo in an appliance or relay config exits 2 naming the
// file, the line and the key or value.
func (s *suite) configTypos(t *testing.T) {
	cl := s.cl
	member := cl.layout.MemberConfig[cl.layout.Members[0]]
	relay := cl.layout.RelayConfig[cl.layout.Relays[0]]
	cases := []struct {
		name, file, sub, from, to, want string
		args                            []string
	}{
		{"unknown key", member, "run", "quic_timeout:", "quic_timeot:", "quic_timeot", nil},
		{"bad duration", member, "run", "quic_timeout: 1s", "quic_timeout: fast", "fast", nil},
		{"relay unknown key", relay, "relay", "\nlisten:", "\nlisen:", "lisen", nil},
	}
	var figs []string
	for _, c := range cases {
		raw, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(raw, []byte(c.from))
		if i < 0 {
			t.Fatalf("%s: %q not in %s", c.name, c.from, c.file)
		}
		line := bytes.Count(raw[:i+len(c.from)-len(strings.TrimLeft(c.from, "\n"))], []byte("\n")) + 1
		typo := filepath.Join(filepath.Dir(c.file), "typo.yaml")
		if err := os.WriteFile(typo, bytes.Replace(raw, []byte(c.from), []byte(c.to), 1), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, cl.bin, c.sub, "--config", typo)
		cmd.Env = cl.env
		out, err := cmd.CombinedOutput()
		cancel()
		os.Remove(typo)
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err == nil {
			code = 0
		}
		msg := strings.ReplaceAll(strings.TrimSpace(string(out)), cl.layout.Dir, "$DEMO")
		if code != 2 {
			t.Errorf("%s: memberd %s with a typo exited %d, want 2: %s", c.name, c.sub, code, msg)
		}
		for _, w := range []string{"typo.yaml", fmt.Sprintf("line %d", line), c.want} {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: the error does not name %q: %s", c.name, w, msg)
			}
		}
		figs = append(figs, fmt.Sprintf("%s: exit %d %q", c.name, code, strings.Join(strings.Fields(msg), " ")))
	}
	s.record(t, "config typos", strings.Join(figs, "; "))
}

package app

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/participation"
	"github.com/memberd/memberd/policy"
)

// TestOsnadminParticipation drives a running demo appliance's channel
// participation API with the stock Fabric 2.5.16 osnadmin: list, join and
// remove work with an admin client certificate of the member CA; without a
// client certificate, with one lacking OU=admin, or with one of another
// member's CA, the handshake is refused; join on a served channel is 405 as
// on a stock orderer; remove then join brings the node back (raft port
// reused at once), and the rejoined node orders again.
func TestOsnadminParticipation(t *testing.T) {
	osnadmin := filepath.Join(testenv.Fabric(t, "osnadmin"), "bin", "osnadmin")
	if testing.Short() {
		t.Skip("runs a consortium")
	}
	dir := filepath.Join(t.TempDir(), "demo")
	L, err := demo.Init(demo.Options{Dir: dir, Members: 3, Relays: 2, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	m, other := L.Members[2], L.Members[0]
	md := filepath.Join(L.Dir, "members", m)
	ensureLoopbackSAN(t, md)
	admin := issueClient(t, md, "admin", "admin")
	client := issueClient(t, md, "client", "client")
	foreign := issueClient(t, filepath.Join(L.Dir, "members", other), "admin", "admin")

	d, ctx := startDemo(t, L, 3*time.Minute)
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	addr := d.ParticipationAddr(m)
	caFile := filepath.Join(md, "ca.pem")
	osn := func(cert [2]string, args ...string) (string, error) {
		t.Helper()
		a := []string{"channel"}
		a = append(a, args...)
		a = append(a, "-o", addr, "--ca-file", caFile)
		if cert[0] != "" {
			a = append(a, "--client-cert", cert[0], "--client-key", cert[1])
		}
		cmd := exec.CommandContext(ctx, osnadmin, a...)
		out, err := cmd.CombinedOutput()
		t.Logf("osnadmin %s: %s", strings.Join(args, " "), bytes.TrimSpace(out))
		return string(out), err
	}
	// want runs osnadmin as admin and checks the status line and the body.
	want := func(status string, body func(map[string]any) bool, args ...string) {
		t.Helper()
		out, err := osn(admin, args...)
		if err != nil {
			t.Fatalf("osnadmin %v: %v: %s", args, err, out)
		}
		head, rest, _ := strings.Cut(out, "\n")
		if head != "Status: "+status {
			t.Fatalf("osnadmin %v: %q, want Status: %s", args, out, status)
		}
		if body != nil {
			var v map[string]any
			if err := json.Unmarshal([]byte(rest), &v); err != nil || !body(v) {
				t.Fatalf("osnadmin %v: body %q (%v)", args, rest, err)
			}
		}
	}
	listed := func(v map[string]any) bool {
		l, _ := v["channels"].([]any)
		return len(l) == 1 && l[0].(map[string]any)["name"] == "demo"
	}
	want("200", listed, "list")
	want("200", func(v map[string]any) bool { return v["name"] == "demo" && v["consensusRelation"] == "consenter" },
		"list", "--channelID", "demo")

	// Refused: a client certificate without OU=admin, or of another
	// member's CA (osnadmin cannot do TLS without a client certificate).
	for name, cert := range map[string][2]string{"OU=client": client, "another member's CA": foreign} {
		out, err := osn(cert, "list")
		if err == nil || strings.Contains(out, "Status:") || !strings.Contains(out, "remote error: tls") {
			t.Fatalf("%s: osnadmin list was not refused in the handshake: %v %q", name, err, out)
		}
	}
	// Refused: plain HTTP (osnadmin without --ca-file), and TLS without a
	// client certificate.
	out, err := exec.CommandContext(ctx, osnadmin, "channel", "list", "-o", addr).CombinedOutput()
	t.Logf("osnadmin list over plain HTTP: %v %s", err, bytes.TrimSpace(out))
	if strings.Contains(string(out), "Status: 200") || strings.Contains(string(out), `"demo"`) {
		t.Fatalf("plain HTTP answered: %s", out)
	}
	roots := x509.NewCertPool()
	pemCA, _ := os.ReadFile(caFile)
	roots.AppendCertsFromPEM(pemCA)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	if resp, err := hc.Get("https://" + addr + participation.URLBase); err == nil {
		resp.Body.Close()
		t.Fatalf("TLS without a client certificate: %d, want a refused handshake", resp.StatusCode)
	} else if !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("TLS without a client certificate: %v, want 'certificate required'", err)
	}

	genesis := filepath.Join(md, demo.LedgerGenesisFile)
	want("405", func(v map[string]any) bool { return v["error"] == "cannot join: channel already exists" },
		"join", "--channelID", "demo", "--config-block", genesis)
	want("204", nil, "remove", "--channelID", "demo")
	want("200", func(v map[string]any) bool { return v["channels"] == nil }, "list")
	want("404", func(v map[string]any) bool { return v["error"] == "channel does not exist" }, "list", "--channelID", "demo")
	want("404", func(v map[string]any) bool { return v["error"] == "cannot remove: channel does not exist" },
		"remove", "--channelID", "demo")
	want("201", func(v map[string]any) bool { return v["name"] == "demo" }, "join", "--channelID", "demo", "--config-block", genesis)
	want("200", listed, "list")

	// The rejoined node is ready again and orders: envelopes submitted to it
	// are in the blocks of every member.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + d.AdminAddr(m) + "/readyz?verbose=1")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after rejoin: %d %s", resp.StatusCode, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	h, err := d.CheckLedger(ctx, m, 5)
	if err != nil {
		t.Fatal(err)
	}
	want("200", func(v map[string]any) bool { return v["status"] == "active" && v["height"] == float64(h) },
		"list", "--channelID", "demo")
}

// issueClient writes a client certificate with OU ou and its key (PEM)
// into a temp folder, signed by the member CA in memberDir.
func issueClient(t *testing.T, memberDir, cn, ou string) [2]string {
	t.Helper()
	ca, caKey := memberCA(t, memberDir)
	cert, key := hsmtest.IssueLeaf(t, ca, caKey, cn, ou)
	d := t.TempDir()
	certPath, keyPath := filepath.Join(d, cn+".pem"), filepath.Join(d, cn+"-key.pem")
	writeCert(t, certPath, cert)
	writeKey(t, keyPath, key)
	return [2]string{certPath, keyPath}
}

func memberCA(t *testing.T, memberDir string) (*x509.Certificate, hsm.Signer) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(memberDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := hsm.ParseCertificatesPEM(b)
	if err != nil || len(certs) == 0 {
		t.Fatalf("ca.pem: %v", err)
	}
	key, err := hsm.OpenSoftSigner(filepath.Join(memberDir, "ca-key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	return certs[0], key
}

// ensureLoopbackSAN re-issues the appliance certificate of memberDir (same
// key) with the IP SAN 127.0.0.1 if it lacks one: osnadmin checks the host
// name of the participation API's server certificate.
func ensureLoopbackSAN(t *testing.T, memberDir string) {
	t.Helper()
	certPath := filepath.Join(memberDir, "identity", "cert.pem")
	b, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := hsm.ParseCertificatesPEM(b)
	if err != nil || len(certs) == 0 {
		t.Fatalf("%s: %v", certPath, err)
	}
	if slices.ContainsFunc(certs[0].IPAddresses, func(ip net.IP) bool { return ip.IsLoopback() }) {
		return
	}
	key, err := hsm.OpenSoftSigner(filepath.Join(memberDir, "identity", "key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
	if err != nil {
		t.Fatalf("the test re-issues the appliance certificate of a --hsm soft demo: %v", err)
	}
	defer key.Close()
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: certs[0].Subject, DNSNames: certs[0].DNSNames,
		IPs: append(slices.Clone(certs[0].IPAddresses), net.IPv4(127, 0, 0, 1))})
	if err != nil {
		t.Fatal(err)
	}
	ca, caKey := memberCA(t, memberDir)
	cert, err := hsm.SignCSR(ca, caKey, csr, hsm.LeafConfig{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	writeCert(t, certPath, cert)
}

// TestOsnadminTwoChannels: with two channels in the policy (alpha of all
// three members, beta of member-b and member-c), the stock osnadmin lists
// both on member-c, which orders both, each as consenter and active, and
// only alpha on member-a, which does not order beta.
func TestOsnadminTwoChannels(t *testing.T) {
	osnadmin := filepath.Join(testenv.Fabric(t, "osnadmin"), "bin", "osnadmin")
	if testing.Short() {
		t.Skip("runs a consortium")
	}
	L, err := demo.Init(demo.Options{Dir: filepath.Join(t.TempDir(), "demo"), Members: 3, Relays: 1, HSM: "soft", Channels: []*policy.Channel{
		{Name: "alpha", Consenters: []string{"member-a", "member-b", "member-c"}},
		{Name: "beta", Consenters: []string{"member-b", "member-c"}, Members: []string{"member-b", "member-c"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	admins := map[string][2]string{}
	for _, m := range []string{"member-a", "member-c"} {
		md := filepath.Join(L.Dir, "members", m)
		ensureLoopbackSAN(t, md)
		admins[m] = issueClient(t, md, "admin", "admin")
	}
	d, ctx := startDemo(t, L, 3*time.Minute)
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	list := func(m string, args ...string) (head, body string) {
		t.Helper()
		a := append([]string{"channel", "list"}, args...)
		a = append(a, "-o", d.ParticipationAddr(m), "--ca-file", filepath.Join(L.Dir, "members", m, "ca.pem"),
			"--client-cert", admins[m][0], "--client-key", admins[m][1])
		out, err := exec.CommandContext(ctx, osnadmin, a...).CombinedOutput()
		t.Logf("%s: osnadmin %s: %s", m, strings.Join(a[:len(a)-8], " "), bytes.TrimSpace(out))
		if err != nil {
			t.Fatalf("%s: osnadmin: %v", m, err)
		}
		head, body, _ = strings.Cut(string(out), "\n")
		return head, body
	}
	for m, want := range map[string][]string{"member-a": {"alpha"}, "member-c": {"alpha", "beta"}} {
		head, body := list(m)
		var v struct {
			Channels []struct {
				Name string `json:"name"`
			} `json:"channels"`
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil || head != "Status: 200" {
			t.Fatalf("%s: osnadmin channel list: %s %v", m, head, err)
		}
		var names []string
		for _, c := range v.Channels {
			names = append(names, c.Name)
			head, body := list(m, "--channelID", c.Name)
			var one map[string]any
			if err := json.Unmarshal([]byte(body), &one); err != nil || head != "Status: 200" ||
				one["consensusRelation"] != "consenter" || one["status"] != "active" || one["name"] != c.Name {
				t.Fatalf("%s: osnadmin channel list --channelID %s: %s %s", m, c.Name, head, body)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, want) {
			t.Fatalf("%s: osnadmin lists %v, want %v", m, names, want)
		}
	}
}

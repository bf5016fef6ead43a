package consortium_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/logtest"
	"github.com/memberd/memberd/internal/testenv"
)

// TestNetnsUDPBlocked runs the real binary as separate processes: two
// relays in the root namespace on a veth address, two member appliances in
// a network namespace whose nftables output chain drops UDP to the relays'
// port (UDP blocked by a firewall, TCP allowed). The appliances must reach
// the relays over TCP, and member A's 'memberd policy push' must reach
// member B through the tunnel. The namespace (with its veth and nftables
// table) is removed at cleanup, also on failure.
func TestNetnsUDPBlocked(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the memberd binary in a network namespace")
	}
	testenv.Root(t)
	ipBin := testenv.Command(t, "ip", "iproute2")
	nftBin := testenv.Command(t, "nft", "nftables")
	testenv.SoftHSMModule(t)
	bin := memberdBin(t)

	// Namespace and veth: 10.231.N.1 (root side, relays) / 10.231.N.2 (ns).
	n := os.Getpid()%200 + 20
	ns := fmt.Sprintf("mdt%d", os.Getpid())
	vh, vn := fmt.Sprintf("mdh%d", os.Getpid()), fmt.Sprintf("mdn%d", os.Getpid())
	hostIP, nsIP := fmt.Sprintf("10.231.%d.1", n), fmt.Sprintf("10.231.%d.2", n)
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	sh("netns", "add", ns)
	t.Cleanup(func() {
		exec.Command(ipBin, "netns", "del", ns).Run()
		exec.Command(ipBin, "link", "del", vh).Run() // gone with the namespace; just in case
	})
	sh("link", "add", vh, "type", "veth", "peer", "name", vn)
	sh("link", "set", vn, "netns", ns)
	sh("addr", "add", hostIP+"/30", "dev", vh)
	sh("link", "set", vh, "up")
	sh("-n", ns, "addr", "add", nsIP+"/30", "dev", vn)
	sh("-n", ns, "link", "set", vn, "up")
	sh("-n", ns, "link", "set", "lo", "up")

	// Relay ports free on the veth address for TCP and UDP.
	var relayAddrs []string
	for range 2 {
		tl, err := net.Listen("tcp", hostIP+":0")
		if err != nil {
			t.Fatal(err)
		}
		a := tl.Addr().String()
		tl.Close()
		relayAddrs = append(relayAddrs, a)
	}
	L, err := demo.Init(demo.Options{Dir: t.TempDir(), Members: 2, Relays: 2, HSM: "softhsm", Relay: relayAddrs})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range L.Members {
		editMemberConfig(t, L, m, func(c map[string]any) { c["relay"].(map[string]any)["quic_timeout"] = "300ms" })
	}

	// The firewall: in the namespace, drop UDP to the relay ports.
	var rules strings.Builder
	rules.WriteString("table inet memberd_test {\n chain out {\n  type filter hook output priority 0; policy accept;\n")
	for _, a := range relayAddrs {
		_, p, _ := net.SplitHostPort(a)
		rules.WriteString("  ip daddr " + hostIP + " udp dport " + p + " counter drop\n")
	}
	rules.WriteString(" }\n}\n")
	nft := exec.Command(ipBin, "netns", "exec", ns, nftBin, "-f", "-")
	nft.Stdin = strings.NewReader(rules.String())
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s\n%s", err, out, rules.String())
	}

	env := append(os.Environ(), "SOFTHSM2_CONF="+L.SoftHSMConf)
	startProc := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			// Logs are JSON (stderr is not a terminal), each key once per line.
			for i, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if _, err := logtest.JSONLine([]byte(l)); err != nil {
					t.Errorf("%s: log line %d: %v\n%s", name, i+1, err, l)
				}
			}
			if t.Failed() {
				t.Logf("%s output:\n%s", name, out.String())
			}
		})
	}
	for _, r := range L.Relays {
		startProc(r, bin, "relay", "--config", L.RelayConfig[r])
	}
	for _, m := range L.Members {
		startProc(m, ipBin, "netns", "exec", ns, bin, "run", "--log-format", "json", "--config", L.MemberConfig[m])
	}

	inNS := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, ipBin, append([]string{"netns", "exec", ns, bin}, args...)...)
		cmd.Env = env
		return cmd.CombinedOutput()
	}
	admin := func(m string) string {
		cfg, err := os.ReadFile(L.MemberConfig[m])
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(cfg), "\n") {
			if v, ok := strings.CutPrefix(l, "admin: "); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatal("no admin address in " + L.MemberConfig[m])
		return ""
	}
	for _, m := range L.Members {
		var last string
		waitFor(t, 30*time.Second, m+" started, on TCP to both relays", func() bool {
			out, err := inNS("status", "--json", "--admin", admin(m))
			if err != nil {
				last = string(out)
				return false
			}
			var st struct {
				Role   string                             `json:"role"`
				Relays []struct{ ID, State, Path string } `json:"relays"`
			}
			// Started too (role "appliance", not "appliance-starting"):
			// the policy push below is refused during start-up.
			if json.Unmarshal(out, &st) != nil || len(st.Relays) != 2 || st.Role != "appliance" {
				last = string(out)
				return false
			}
			last = fmt.Sprint(st.Relays)
			for _, r := range st.Relays {
				if r.State != "up" || r.Path != "tcp" {
					return false
				}
			}
			return true
		})
		t.Logf("%s: %s", m, last)
	}
	out, err := inNS("policy", "push", "--admin", admin(L.Members[0]), filepath.Join(L.Dir, "genesis.yaml"))
	if err != nil {
		t.Fatalf("policy push through the tunnel over TCP: %v\n%s", err, out)
	}
	t.Logf("memberd policy push:\n%s", out)
	cnt, _ := exec.Command(ipBin, "netns", "exec", ns, nftBin, "list", "table", "inet", "memberd_test").CombinedOutput()
	dropped := 0
	for _, m := range regexp.MustCompile(`counter packets (\d+)`).FindAllStringSubmatch(string(cnt), -1) {
		k, _ := strconv.Atoi(m[1])
		dropped += k
	}
	if dropped == 0 {
		t.Fatalf("the firewall dropped no UDP packet: the appliances never tried QUIC?\n%s", cnt)
	}
	t.Logf("the firewall dropped %d UDP packets to the relays", dropped)
}

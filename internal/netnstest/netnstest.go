// Package netnstest builds small networks of Linux network namespaces for
// tests that run real processes as separate "hosts": one namespace per host,
// each with a veth whose other end is attached to a bridge inside a bridge
// namespace of its own. The root namespace is not connected, so the
// addresses (any private range the test picks) never clash with the
// machine's or another test's.
//
// Everything a Net makes (namespaces, and with them veths, bridge and
// nftables tables) is removed by t.Cleanup, also when the test fails.
// It needs root and iproute2 (and nft for Host.Nft): callers check with
// testenv.Root and testenv.Command first.
package netnstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Net is a bridge namespace and the hosts attached to it.
type Net struct {
	t      testing.TB
	ip     string // path of the ip binary
	prefix string // namespace name prefix, unique per test process
	bridge string // the bridge namespace
	plen   int    // prefix length of every host address

	mu    sync.Mutex // guards hosts
	hosts []*Host
}

// Host is one namespace with one address on the bridge.
type Host struct {
	Name string // as given to AddHost
	NS   string // namespace name (ip netns ...)
	IP   string // its address on the bridge
	n    *Net
}

// New makes the bridge namespace. ipBin is the path of ip (iproute2);
// prefixLen is the prefix length hosts' addresses get (e.g. 24).
func New(t testing.TB, ipBin string, prefixLen int) *Net {
	t.Helper()
	n := &Net{t: t, ip: ipBin, prefix: fmt.Sprintf("mde%d", os.Getpid()), plen: prefixLen}
	n.bridge = n.prefix + "-br"
	n.removeStale()
	n.run("netns", "add", n.bridge)
	t.Cleanup(n.remove)
	n.run("-n", n.bridge, "link", "add", "br0", "type", "bridge")
	n.run("-n", n.bridge, "link", "set", "br0", "up")
	n.run("-n", n.bridge, "link", "set", "lo", "up")
	return n
}

// Bridge returns the bridge namespace as a Host (no address), e.g. to load
// nftables rules of family bridge there: an on-path firewall that drops
// silently, where a host's own output rules fail its sends at once.
func (n *Net) Bridge() *Host { return &Host{Name: "bridge", NS: n.bridge, n: n} }

// AddHost makes a namespace with loopback up and eth0 at addr on the bridge.
func (n *Net) AddHost(name, addr string) *Host {
	n.t.Helper()
	n.mu.Lock()
	idx := len(n.hosts)
	h := &Host{Name: name, NS: n.prefix + "-" + name, IP: addr, n: n}
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	n.run("netns", "add", h.NS)
	// The bridge side's name must be unique in the bridge namespace only.
	peer := fmt.Sprintf("h%d", idx)
	n.run("-n", h.NS, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", n.bridge)
	n.run("-n", n.bridge, "link", "set", peer, "master", "br0")
	n.run("-n", n.bridge, "link", "set", peer, "up")
	n.run("-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", addr, n.plen), "dev", "eth0")
	n.run("-n", h.NS, "link", "set", "eth0", "up")
	n.run("-n", h.NS, "link", "set", "lo", "up")
	return h
}

func (n *Net) run(args ...string) {
	n.t.Helper()
	if out, err := exec.Command(n.ip, args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// removeStale deletes the namespaces a Net of a test process that no
// longer exists left behind (killed before its cleanup ran): names are
// mde<pid>-<host>.
func (n *Net) removeStale() {
	out, err := exec.Command(n.ip, "netns", "list").Output()
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		var pid int
		var rest string
		if k, _ := fmt.Sscanf(f[0], "mde%d-%s", &pid, &rest); k != 2 || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); err == nil || err == unix.EPERM {
			continue // its test is still running
		}
		exec.Command(n.ip, "netns", "del", f[0]).Run()
	}
}

// remove deletes every namespace made (veths and tables go with them).
func (n *Net) remove() {
	n.mu.Lock()
	hosts := n.hosts
	n.mu.Unlock()
	for _, h := range hosts {
		if out, err := exec.Command(n.ip, "netns", "del", h.NS).CombinedOutput(); err != nil {
			n.t.Logf("removing namespace %s: %v: %s", h.NS, err, out)
		}
	}
	if out, err := exec.Command(n.ip, "netns", "del", n.bridge).CombinedOutput(); err != nil {
		n.t.Logf("removing namespace %s: %v: %s", n.bridge, err, out)
	}
}

// Command returns a command that runs name with args inside h's namespace
// (through ip netns exec, which execs it: the process's PID is the
// command's own).
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, h.n.ip, append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Nft loads an nftables ruleset (nft -f syntax) inside h's namespace.
func (h *Host) Nft(nftBin, rules string) error {
	cmd := exec.Command(h.n.ip, "netns", "exec", h.NS, nftBin, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s\nruleset:\n%s", h.NS, err, out, rules)
	}
	return nil
}

// NftOut runs nft with args inside h's namespace and returns its output.
func (h *Host) NftOut(nftBin string, args ...string) (string, error) {
	out, err := exec.Command(h.n.ip, append([]string{"netns", "exec", h.NS, nftBin}, args...)...).CombinedOutput()
	return string(out), err
}

// Do runs fn on an OS thread switched into h's namespace: sockets fn makes
// belong to that namespace and keep working from any goroutine afterwards.
// The thread is switched back before it is released, so the caller's
// namespace is unchanged; if switching back fails, the thread stays locked
// and the runtime ends it with the goroutine.
func (h *Host) Do(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + h.NS)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns %s: %w", h.NS, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("setns back from %s: %w", h.NS, err)
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// DialContext opens a connection from inside h's namespace (e.g. to a
// 127.0.0.1 port that only exists there).
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil && c != nil {
		c.Close()
		c = nil
	}
	return c, err
}

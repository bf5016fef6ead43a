package netnstest_test

import (
	"bytes"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/netnstest"
	"github.com/memberd/memberd/internal/testenv"
)

// TestNet: two hosts on the bridge reach each other by address (the root
// namespace has no address there); a capture on one host sees what the
// other writes; every namespace is gone after the test.
func TestNet(t *testing.T) {
	testenv.Root(t)
	ip := testenv.Command(t, "ip", "iproute2")
	var made []string
	t.Run("hosts", func(t *testing.T) {
		n := netnstest.New(t, ip, 24)
		a := n.AddHost("a", "10.78.0.1")
		b := n.AddHost("b", "10.78.0.2")
		made = []string{a.NS, b.NS}
		var l net.Listener
		if err := b.Do(func() (err error) { l, err = net.Listen("tcp", b.IP+":7000"); return err }); err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		needle := []byte("netnstest-needle-0123456789")
		c, err := b.Capture(needle)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Stop()
		got := make(chan []byte, 1)
		go func() {
			s, err := l.Accept()
			if err != nil {
				got <- nil
				return
			}
			defer s.Close()
			buf, _ := io.ReadAll(s)
			got <- buf
		}()
		conn, err := a.DialContext(t.Context(), "tcp", b.IP+":7000")
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(needle)
		conn.Close()
		if buf := <-got; !bytes.Equal(buf, needle) {
			t.Fatalf("host b received %q, want %q", buf, needle)
		}
		// The root namespace has no address on the test bridge.
		if out, err := exec.Command(ip, "-o", "addr").Output(); err != nil || strings.Contains(string(out), "10.78.0.") {
			t.Fatalf("root namespace addresses (err %v) include the test bridge's:\n%s", err, out)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			frames, _, hits := c.Counts()
			if hits[0] > 0 {
				t.Logf("capture: %d frames, needle in %d", frames, hits[0])
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the capture on b saw %d frames, none with the needle", frames)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	out, err := exec.Command(ip, "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range made {
		if strings.Contains(string(out), ns) {
			t.Errorf("namespace %s left behind: %s", ns, out)
		}
	}
}

package relay

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/memberd/memberd/internal/testpki"
)

// A relay in a child process (this test binary re-executed), so that its
// memory can be measured apart from the clients'.
//
// Protocol on stdin/stdout: the child prints "ready ADDR"; for every line
// "mem" on stdin it prints "mem HEAPINUSE GOROUTINES MEMBERS" after a GC;
// it exits when stdin closes.
const childEnv = "MEMBERD_RELAY_TEST_CHILD_DIR"

func relayChild() int {
	dir := os.Getenv(childEnv)
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "relay child:", err); return 1 }
	certPEM, err := os.ReadFile(filepath.Join(dir, "relay.crt"))
	if err != nil {
		return fail(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "relay.key"))
	if err != nil {
		return fail(err)
	}
	id, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fail(err)
	}
	cas := map[string][]*x509.Certificate{}
	files, _ := filepath.Glob(filepath.Join(dir, "ca-*.pem"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fail(err)
		}
		m := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "ca-"), ".pem")
		cas[m] = []*x509.Certificate{c}
	}
	addr, _ := os.ReadFile(filepath.Join(dir, "addr"))
	leaf, _ := x509.ParseCertificate(id.Certificate[0])
	auth, err := NewStaticAuthority(StaticPolicy{MemberCAs: cas, AllowAll: true,
		Relays: []RelayInfo{{ID: "relay-1", Addr: string(addr), Pin: PinOf(leaf)}}})
	if err != nil {
		return fail(err)
	}
	srv, err := NewServer(ServerConfig{ID: "relay-1", Identity: id, Authority: auth})
	if err != nil {
		return fail(err)
	}
	udp, err := net.ListenPacket("udp", string(addr))
	if err != nil {
		return fail(err)
	}
	ql, err := quic.Listen(udp, srv.TLSConfig(), srv.QUICConfig())
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.ServeQUIC(ctx, ql); close(done) }()
	fmt.Println("ready", udp.LocalAddr())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "mem" {
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			fmt.Println("mem", ms.HeapInuse, runtime.NumGoroutine(), len(srv.Members()))
		}
	}
	cancel()
	srv.Close()
	<-done
	ql.Close()
	udp.Close()
	return 0
}

// childRelay starts the child and returns a function that asks it for
// (heap in use, goroutines, members).
func childRelay(b *testing.B, members []string) (info RelayInfo, mem func() (heap, goroutines, n int), cas map[string]*testpki.CA) {
	dir := b.TempDir()
	rc := testpki.SelfSigned(b, "relay-1").TLS()
	der, _ := x509.MarshalECPrivateKey(rc.PrivateKey.(*ecdsa.PrivateKey))
	write := func(name string, blk *pem.Block) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	write("relay.crt", &pem.Block{Type: "CERTIFICATE", Bytes: rc.Certificate[0]})
	write("relay.key", &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	cas = map[string]*testpki.CA{}
	for _, m := range members {
		cas[m] = testpki.NewCA(b, m)
		write("ca-"+m+".pem", &pem.Block{Type: "CERTIFICATE", Bytes: cas[m].Cert.Raw})
	}
	addr := freePort(b)
	if err := os.WriteFile(filepath.Join(dir, "addr"), []byte(addr), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill() // by PID: the child this benchmark started
			<-done
		}
	})
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "ready ") {
		b.Fatalf("relay child did not start: %q", lines.Text())
	}
	mem = func() (int, int, int) {
		if _, err := io.WriteString(stdin, "mem\n"); err != nil {
			b.Fatal(err)
		}
		if !lines.Scan() {
			b.Fatal("relay child gone")
		}
		f := strings.Fields(lines.Text())
		h, _ := strconv.Atoi(f[1])
		g, _ := strconv.Atoi(f[2])
		n, _ := strconv.Atoi(f[3])
		return h, g, n
	}
	return RelayInfo{ID: "relay-1", Addr: addr, Pin: PinOf(rc.Leaf)}, mem, cas
}

// BenchmarkRelayMemoryPerMember measures the relay alone (in a child
// process): heap and goroutines per connected member over QUIC, 200
// members (20 with -short).
func BenchmarkRelayMemoryPerMember(b *testing.B) {
	members := 200
	if testing.Short() {
		members = 20
	}
	ids := make([]string, members)
	for j := range ids {
		ids[j] = fmt.Sprintf("m%03d", j)
	}
	for i := 0; i < b.N; i++ {
		info, mem, cas := childRelay(b, ids)
		heap0, gr0, _ := mem()
		cs := make([]*Client, 0, members)
		for _, m := range ids {
			c, err := NewClient(ClientConfig{Identity: cas[m].Issue(b, m).TLS(), Relays: []RelayInfo{info}, NoEnvProxy: true})
			if err != nil {
				b.Fatal(err)
			}
			go c.Run(context.Background()) // until Close
			cs = append(cs, c)
		}
		deadline := time.Now().Add(60 * time.Second)
		var heap1, gr1, n int
		for n < members && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			heap1, gr1, n = mem()
		}
		for _, c := range cs {
			c.Close()
		}
		if n < members {
			b.Fatalf("only %d of %d members connected", n, members)
		}
		b.ReportMetric(float64(heap1-heap0)/float64(members), "relay_heap_B/member")
		b.ReportMetric(float64(gr1-gr0)/float64(members), "relay_goroutines/member")
	}
}

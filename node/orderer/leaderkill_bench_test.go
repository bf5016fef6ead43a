package orderer

import (
	"context"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// blackholeNet dials the nodes' gRPC addresses for the followers'
// forwarders, and makes a killed node look as it does through the tunnel:
// its connections neither answer nor fail, and dials to it hang.
type blackholeNet struct {
	mu    sync.Mutex
	dead  map[string]bool
	conns map[string][]*frozenConn
}

type frozenConn struct {
	net.Conn
	frozen atomic.Bool
	closed chan struct{}
	once   sync.Once
}

func (c *frozenConn) Read(b []byte) (int, error) {
	if !c.frozen.Load() {
		n, err := c.Conn.Read(b)
		if err == nil || !c.frozen.Load() {
			return n, err
		}
	}
	<-c.closed // a dead peer: no answer, no reset
	return 0, net.ErrClosed
}

func (c *frozenConn) Write(b []byte) (int, error) {
	if c.frozen.Load() {
		<-c.closed
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

func (c *frozenConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (bn *blackholeNet) dial(ctx context.Context, addr string) (net.Conn, error) {
	bn.mu.Lock()
	dead := bn.dead[addr]
	bn.mu.Unlock()
	if dead {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	fc := &frozenConn{Conn: c, closed: make(chan struct{})}
	bn.mu.Lock()
	bn.conns[addr] = append(bn.conns[addr], fc)
	bn.mu.Unlock()
	return fc, nil
}

func (bn *blackholeNet) kill(addr string) {
	bn.mu.Lock()
	defer bn.mu.Unlock()
	bn.dead[addr] = true
	for _, c := range bn.conns[addr] {
		c.frozen.Store(true)
	}
}

// BenchmarkLeaderKillGap: a 3-node cluster on loopback whose client sends
// to the raft leader and, when its streams break (the leader is killed),
// to a follower, which forwards to the leader through connections that,
// as through the tunnel, neither answer nor fail once the leader is dead.
// It reports the time from the kill to a new leader (elect-ms) and to the
// first SUCCESS after that (resume-ms). Each iteration builds a cluster:
// run with -benchtime=Nx.
func BenchmarkLeaderKillGap(b *testing.B) {
	var elect, resume time.Duration
	for range b.N {
		e, r := leaderKillGap(b)
		elect += e
		resume += r
	}
	b.ReportMetric(float64(elect.Milliseconds())/float64(b.N), "elect-ms")
	b.ReportMetric(float64(resume.Milliseconds())/float64(b.N), "resume-ms")
	b.ReportMetric(0, "ns/op")
}

func leaderKillGap(b *testing.B) (elect, resume time.Duration) {
	b.StopTimer()
	bn := &blackholeNet{dead: map[string]bool{}, conns: map[string][]*frozenConn{}}
	var clp atomic.Pointer[cluster]
	var mu sync.Mutex // guards fwds, conns
	var fwds []*BroadcastForwarder
	var conns []*grpc.ClientConn
	cl := newCluster(b, 3, testBatch(), func(c *Config) {
		clients := map[uint64]ab.AtomicBroadcastClient{}
		var cmu sync.Mutex
		f := &BroadcastForwarder{Lookup: func(id uint64) ab.AtomicBroadcastClient {
			cmu.Lock()
			defer cmu.Unlock()
			if c, ok := clients[id]; ok {
				return c
			}
			cl := clp.Load()
			if cl == nil || id == 0 || id > uint64(len(cl.nodes)) {
				return nil
			}
			conn, err := grpc.NewClient("passthrough:///"+cl.nodes[id-1].addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(bn.dial))
			if err != nil {
				return nil
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			clients[id] = ab.NewAtomicBroadcastClient(conn)
			return clients[id]
		}}
		mu.Lock()
		fwds = append(fwds, f)
		mu.Unlock()
		c.Forwarder = f
	})
	clp.Store(cl)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, f := range fwds {
			f.Close()
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	l := cl.leader(20 * time.Second)
	f := l%3 + 1
	envs, _ := envelopes(b, cl.c.identity(b, "m1", "client"), 20000, 100)
	var next atomic.Int64
	var amu sync.Mutex
	var acks []time.Time
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := l
			for ctx.Err() == nil {
				s, err := cl.nodes[target-1].client.Broadcast(ctx)
				if err != nil {
					target = f // the client fails over, as a Fabric SDK with several orderers
					time.Sleep(20 * time.Millisecond)
					continue
				}
				for ctx.Err() == nil {
					i := next.Add(1) - 1
					if i >= int64(len(envs)) {
						return
					}
					if s.Send(envs[i]) != nil {
						break
					}
					r, err := s.Recv()
					if err != nil {
						break
					}
					if r.Status == common.Status_SUCCESS {
						amu.Lock()
						acks = append(acks, time.Now())
						amu.Unlock()
					} else {
						time.Sleep(20 * time.Millisecond)
					}
				}
				target = f
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	count := func() int {
		amu.Lock()
		defer amu.Unlock()
		return len(acks)
	}
	for deadline := time.Now().Add(20 * time.Second); count() < 200; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d SUCCESS before the kill", count())
		}
	}
	b.StartTimer()
	kill := time.Now()
	bn.kill(cl.nodes[l-1].addr)
	cl.net.Partition(cl.nodes[l-1].name)
	cl.stop(l)
	var elected time.Time
	for deadline := kill.Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if n := cl.node(f); n.IsLeader() || (n.Raft().Leader() != 0 && n.Raft().Leader() != l) {
			elected = time.Now()
			break
		}
	}
	if elected.IsZero() {
		b.Fatal("no new leader 20 s after the kill")
	}
	var first time.Time
	for deadline := kill.Add(30 * time.Second); first.IsZero() && time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		amu.Lock()
		if i := sort.Search(len(acks), func(i int) bool { return !acks[i].Before(elected) }); i < len(acks) {
			first = acks[i]
		}
		amu.Unlock()
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	if first.IsZero() {
		b.Fatal("no SUCCESS 30 s after the kill")
	}
	b.Logf("kill -> new leader %v -> first SUCCESS %v after the kill", elected.Sub(kill).Round(time.Millisecond), first.Sub(kill).Round(time.Millisecond))
	return elected.Sub(kill), first.Sub(kill)
}

package orderer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/benchload"
	"github.com/memberd/memberd/node/raftlog"
)

// newConsenterCluster is TestNewConsenterSignsNoBlockOfAnotherConfig's
// cluster: m1..m3 of the genesis, then m4 (no orderer org of the channel
// config, which no CONFIG block changes) added as a 4th consenter, started
// and a voter. Node 4 stores the other consenters' copies of every block.
func newConsenterCluster(tb testing.TB, tune func(*Config)) *cluster {
	cl := newCluster(tb, 3, testBatch(), func(c *Config) {
		liveMembership(c)
		if c.Raft.ID == 4 && c.Raft.Peers != nil { // the new consenter: no addresses, Join
			c.Raft.Join, c.Raft.Peers = true, []raftlog.Peer{{ID: 4}}
		}
		if tune != nil {
			tune(c)
		}
	})
	cl.leader(10 * time.Second)
	cl.addMember(tb, "m4")
	tn4 := cl.addSlot()
	cl.setConsenters(tb, "m1", "m2", "m3", "m4")
	all := []uint64{1, 2, 3, 4}
	cl.waitVoters(cl.leader(10*time.Second), all, 20*time.Second)
	cl.start(tn4.id)
	cl.waitVoters(4, all, 20*time.Second)
	return cl
}

// transferTo makes node to the leader and waits until it cuts blocks.
func (cl *cluster) transferTo(tb testing.TB, to uint64) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l := cl.leader(10 * time.Second)
		if l == to && cl.node(to).Raft().Progress() != nil {
			return
		}
		if l != to {
			// raft drops a transfer the target cannot take up within an
			// election timeout; TransferLeadership then waits on: ask again.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := cl.node(l).Raft().TransferLeadership(ctx, to); err != nil {
				tb.Logf("transfer leadership %d -> %d: %v", l, to, err)
			}
			cancel()
		}
		if time.Now().After(deadline) {
			tb.Fatalf("node %d does not lead", to)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkNewConsenter: Broadcast throughput and submit→SUCCESS latency
// with a genesis consenter leading (node 1, clients on it) and with the
// new consenter leading (node 4, which stores other consenters' copies of
// the blocks it cuts), alternated on the same 4-node cluster. 4 streams,
// 1 KB envelopes: "rate=max" 8,000 flat out, "rate=200" 1,000 paced. The election
// timeout is raftlog's default (1 s): the tests' 200 ms flaps on this
// shared machine whoever leads.
func BenchmarkNewConsenter(b *testing.B) {
	cl := newConsenterCluster(b, func(c *Config) { c.Raft.ElectionTicks = 50 })
	id := cl.c.identity(b, "m2", "bench")
	for round := 1; round <= 2; round++ {
		for _, lead := range []uint64{1, 4} {
			for _, rate := range []int{0, 200} {
				name := "genesis"
				if lead == 4 {
					name = "new"
				}
				rs := "max"
				if rate > 0 {
					rs = fmt.Sprint(rate)
				}
				b.Run(fmt.Sprintf("round=%d/leader=%s/rate=%s", round, name, rs), func(b *testing.B) {
					cl.transferTo(b, lead)
					total := 1000 // 5 s paced
					if rate == 0 {
						total = 8000
					}
					envs, _ := envelopes(b, id, total, 1024)
					h0 := cl.node(lead).Height()
					b.ResetTimer()
					res := benchload.Run(cl.nodes[lead-1].client, envs, 4, rate, 0)
					b.StopTimer()
					if res.OK != len(envs) {
						b.Fatalf("%d SUCCESS of %d: %v", res.OK, len(envs), res.Other)
					}
					b.ReportMetric(float64(res.Elapsed.Nanoseconds())/float64(res.OK), "ns/op")
					b.ReportMetric(float64(res.OK)/res.Elapsed.Seconds(), "tx/s")
					b.ReportMetric(float64(benchload.Percentile(res.Lat, 0.5))/1e6, "p50-ms")
					b.ReportMetric(float64(benchload.Percentile(res.Lat, 0.99))/1e6, "p99-ms")
					b.ReportMetric(float64(cl.node(lead).Height()-h0), "blocks")
				})
			}
		}
	}
}

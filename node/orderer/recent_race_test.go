package orderer

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
)

// TestLoadRecentWhileOrdering is the crash `make soak` found on a member
// under load: installing a raft snapshot reloads the duplicate set
// (catchUp → loadRecent) while Broadcast streams check it (order), and the
// unguarded writes ended the process with "concurrent map read and map
// write". Under -race this test fails on the old loadRecent.
func TestLoadRecentWhileOrdering(t *testing.T) {
	cl := newCluster(t, 3, block.CutterConfig{MaxMessageCount: 10, BatchTimeout: 50 * time.Millisecond}, nil)
	n := cl.node(cl.leader(10 * time.Second))
	id := cl.c.identity(t, "m1", "client-race")
	envs, _ := envelopes(t, id, 200, 64)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				n.loadRecent()
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, e := range envs {
		raw, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := n.Order(ctx, raw); err == nil {
			_ = p.Wait(ctx)
		}
	}
	close(stop)
	wg.Wait()
}

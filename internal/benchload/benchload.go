// Package benchload is the Broadcast load of the ordering benchmarks: the
// node-alone cluster (node/orderer's BenchmarkOrdering) and the appliances
// (`make bench-appliance`) send the same pre-signed envelopes the same way,
// so that their figures compare.
package benchload

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
)

// Result is what a Run measured.
type Result struct {
	OK      int             // answered SUCCESS
	Elapsed time.Duration   // first send to last answer
	Lat     []time.Duration // each envelope's send to its answer
	// Other counts the other answers by status and info, and streams that
	// broke ("stream: error").
	Other map[string]int
}

// Run sends envs over streams Broadcast streams and measures the answers. rate > 0 paces the sends:
// envelope i of stream s is due at start + (i*streams+s)/rate, an open loop
// (a late sender catches up without waiting for answers); 0 sends flat out.
// Each stream is pipelined: it sends without waiting for answers, with at
// most window envelopes unanswered (0: no bound, all of them).
func Run(c ab.AtomicBroadcastClient, envs []*common.Envelope, streams, rate, window int) Result {
	var mu sync.Mutex
	res := Result{Other: map[string]int{}}
	other := func(what string) { mu.Lock(); res.Other[what]++; mu.Unlock() }
	var wg sync.WaitGroup
	start := time.Now()
	per := (len(envs) + streams - 1) / streams
	for s := range streams {
		part := envs[min(s*per, len(envs)):min((s+1)*per, len(envs))]
		if len(part) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.Broadcast(context.Background())
			if err != nil {
				other("stream: " + err.Error())
				return
			}
			sent := make([]time.Time, len(part))
			w := window
			if w <= 0 || w > len(part) {
				w = len(part)
			}
			slots := make(chan struct{}, w)
			go func() {
				for i, e := range part {
					slots <- struct{}{}
					if rate > 0 {
						due := start.Add(time.Duration(i*streams+s) * time.Second / time.Duration(rate))
						time.Sleep(time.Until(due))
					}
					sent[i] = time.Now()
					if st.Send(e) != nil {
						return
					}
				}
			}()
			var local []time.Duration
			good := 0
			for i := range part {
				r, err := st.Recv()
				if err != nil {
					other("stream: " + err.Error())
					break
				}
				local = append(local, time.Since(sent[i]))
				<-slots
				if r.Status == common.Status_SUCCESS {
					good++
				} else {
					other(r.Status.String() + ": " + r.Info)
				}
			}
			st.CloseSend()
			mu.Lock()
			res.Lat, res.OK = append(res.Lat, local...), res.OK+good
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// Percentile returns the q quantile (0..1) of lat, sorting it; 0 when empty.
func Percentile(lat []time.Duration, q float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[min(len(lat)-1, int(q*float64(len(lat))))]
}

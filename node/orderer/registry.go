package orderer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/node/participation"
)

// Registry is the set of channels a process orders: it runs one Node per
// channel, implements participation.Registry (so osnadmin can list, join and
// remove channels) and gives Server its Lookup.
//
// Its lifecycle is the one of every long-running part: the zero value
// (with Open set) starts nothing, Run(ctx) runs the nodes until ctx ends or
// Close, and Close is idempotent. Nodes added by Start before Run start
// running when Run does; those added while it runs (Join) start at once,
// under Run's context.
type Registry struct {
	// Open builds (but does not run) the node for a channel from its config
	// block; cmd decides directories, raft peers and identity. Required.
	Open func(channel string, configBlock *common.Block) (*Node, error)
	// Removed, if set, is called after a channel's node is closed by Remove
	// (e.g. to delete its directories).
	Removed func(channel string) error
	Logger  *slog.Logger

	mu      sync.Mutex
	nodes   map[string]*running
	ctx     context.Context    // Run's (nil before Run): the nodes run under it
	cancel  context.CancelFunc // ends Run
	stopped bool               // Run has returned or Close was called: no node starts any more
	wg      sync.WaitGroup     // the nodes' Run goroutines
}

// running is a node of the Registry; cancel and done are set once it runs.
type running struct {
	n      *Node
	cancel context.CancelFunc
	done   chan struct{}
	halted bool // Halt: never run again
}

// ErrRegistryClosed: the Registry was closed, or its Run has returned.
var ErrRegistryClosed = errors.New("ordering node registry closed")

var _ participation.Registry = (*Registry)(nil)

// Lookup returns the node of a channel, nil if none (for ServerConfig.Lookup).
func (r *Registry) Lookup(channel string) *Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rn, ok := r.nodes[channel]; ok {
		return rn.n
	}
	return nil
}

// Start adds n (already opened) as the node of its channel: it runs from
// Run on (at once if Run is running). After Close or Run's end the error
// wraps ErrRegistryClosed, and the caller still owns n.
func (r *Registry) Start(n *Node) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return fmt.Errorf("%w: cannot start channel %q", ErrRegistryClosed, n.ChannelID())
	}
	if r.nodes == nil {
		r.nodes = map[string]*running{}
	}
	if _, ok := r.nodes[n.ChannelID()]; ok {
		return fmt.Errorf("%w: %q", participation.ErrExists, n.ChannelID())
	}
	rn := &running{n: n}
	r.nodes[n.ChannelID()] = rn
	if r.ctx != nil {
		r.runLocked(rn)
	}
	return nil
}

// runLocked runs rn's node under Run's context. mu held, r.stopped false.
func (r *Registry) runLocked(rn *running) {
	ctx, cancel := context.WithCancel(r.ctx)
	rn.cancel, rn.done = cancel, make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(rn.done)
		if err := rn.n.Run(ctx); err != nil && r.Logger != nil {
			r.Logger.Error("ordering node stopped", "channel", rn.n.ChannelID(), "err", err)
		}
	}()
}

// Run runs the nodes, those started before and those started meanwhile,
// until ctx ends or Close; then it stops them (Close closes them) and
// returns nil. Run may be called once; after Close the error wraps
// ErrRegistryClosed.
func (r *Registry) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return ErrRegistryClosed
	}
	if r.ctx != nil {
		r.mu.Unlock()
		return errors.New("orderer: Registry.Run called twice")
	}
	r.ctx, r.cancel = context.WithCancel(ctx)
	for _, rn := range r.nodes {
		if !rn.halted {
			r.runLocked(rn)
		}
	}
	done := r.ctx.Done()
	r.mu.Unlock()
	<-done
	r.mu.Lock()
	r.stopped = true // no wg.Add after this: Wait may begin
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

func info(n *Node) participation.ChannelInfo {
	rel := "follower"
	for _, v := range n.raft.Status().Voters {
		if v == n.raft.ID() {
			rel = "consenter"
		}
	}
	status := "active"
	if n.Healthy() != nil {
		status = "onboarding"
	}
	return participation.ChannelInfo{Name: n.ChannelID(), URL: participation.URLBase + "/" + n.ChannelID(),
		ConsensusRelation: rel, Status: status, Height: n.Height()}
}

// nodesNow returns the nodes running now.
func (r *Registry) nodesNow() []*Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Node, 0, len(r.nodes))
	for _, rn := range r.nodes {
		out = append(out, rn.n)
	}
	return out
}

// List implements participation.Registry.
func (r *Registry) List() []participation.ChannelInfo {
	r.mu.Lock()
	var out []participation.ChannelInfo
	for _, rn := range r.nodes {
		out = append(out, info(rn.n))
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get implements participation.Registry.
func (r *Registry) Get(name string) (participation.ChannelInfo, error) {
	n := r.Lookup(name)
	if n == nil {
		return participation.ChannelInfo{}, fmt.Errorf("%w: %q", participation.ErrNotFound, name)
	}
	return info(n), nil
}

// Join implements participation.Registry.
func (r *Registry) Join(_ context.Context, b *common.Block) (participation.ChannelInfo, error) {
	ch, err := channelconfig.Parse(b)
	if err != nil {
		return participation.ChannelInfo{}, fmt.Errorf("%w: %w", participation.ErrBadBlock, err)
	}
	if r.Lookup(ch.Config.ChannelID) != nil {
		return participation.ChannelInfo{}, fmt.Errorf("%w: %q", participation.ErrExists, ch.Config.ChannelID)
	}
	n, err := r.Open(ch.Config.ChannelID, b)
	if err != nil {
		if errors.Is(err, ErrInvalidConfig) {
			err = fmt.Errorf("%w: %w", participation.ErrBadBlock, err)
		}
		return participation.ChannelInfo{}, err
	}
	if err := r.Start(n); err != nil {
		n.Close()
		return participation.ChannelInfo{}, err
	}
	return info(n), nil
}

// Remove implements participation.Registry: stops and closes the node.
func (r *Registry) Remove(_ context.Context, name string) error {
	r.mu.Lock()
	rn, ok := r.nodes[name]
	delete(r.nodes, name)
	var st stopper
	if ok {
		st = rn.stopper()
	}
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", participation.ErrNotFound, name)
	}
	st.stop()
	if err := rn.n.Close(); err != nil {
		return err
	}
	if r.Removed != nil {
		return r.Removed(name)
	}
	return nil
}

// stopper ends a node's Run: a copy of its cancel and done, taken under
// Registry.mu (runLocked writes them under it, and a policy callback may
// Halt or Remove a channel while Run starts it).
type stopper struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// stopper returns rn's cancel and done as they are now. Registry.mu held.
func (rn *running) stopper() stopper { return stopper{cancel: rn.cancel, done: rn.done} }

// stop ends the node's Run, if it runs, and waits for it.
func (st stopper) stop() {
	if st.cancel != nil {
		st.cancel()
		<-st.done
	}
}

// Close stops Run and every node, and closes the nodes. Idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	nodes := r.nodes
	r.nodes = nil
	r.stopped = true
	cancel := r.cancel
	stops := make(map[*running]stopper, len(nodes))
	for _, rn := range nodes {
		stops[rn] = rn.stopper()
	}
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	var errs []error
	for _, rn := range nodes {
		stops[rn].stop()
		errs = append(errs, rn.n.Close())
	}
	r.wg.Wait()
	return errors.Join(errs...)
}

// Halt stops the node of channel ordering: its Run ends (raft stops, it
// takes no submissions) while it stays listed, its block store open, so
// its blocks stay readable (Deliver with BEST_EFFORT, the participation
// API). A halted node does not run again: Remove it, or restart. Halting a
// halted node does nothing.
func (r *Registry) Halt(channel string) error {
	r.mu.Lock()
	rn, ok := r.nodes[channel]
	var st stopper
	if ok {
		rn.halted = true
		st = rn.stopper()
	}
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", participation.ErrNotFound, channel)
	}
	st.stop()
	return nil
}

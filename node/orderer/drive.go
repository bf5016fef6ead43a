package orderer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
)

// drive is the ordering loop: on the leader, it cuts blocks (time from a
// timer) and proposes them.
//
// Unless Config.FixedBatches, it cuts adaptively (block.Cutter.Due): when
// no block it proposed is still waiting to be applied, the pending
// envelopes are cut at once; while one is, they keep filling the next
// block up to Fabric's limits. n.applied wakes it when a block is stored.
func (n *Node) drive(ctx context.Context) error {
	var (
		leading    bool
		cut        *block.Cutter
		tipNum     uint64
		tipHash    []byte
		lastHeight = n.store.Height()
		progressAt = n.cfg.Now()
		// keys of the envelopes in the cutter, in order: the cutter keeps
		// order and cuts consecutive runs, so each batch pops its keys.
		keys []txKey
		// cfgInFlight: the number of the config block this leader proposed
		// and that is not stored yet (0: none); no other block is proposed
		// meanwhile. cfgSettled: the policy version (and its number of
		// admin config signatures, which a bundle may gain without a new
		// version) whose channel config this leader has dealt with
		// (nothing due, proposed, or failed).
		cfgInFlight uint64
		cfgSettled  string
	)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	stall := time.NewTicker(n.cfg.StallTimeout / 4)
	defer stall.Stop()

	stepDown := func(why string) {
		if leading {
			n.log.Info("stopped cutting blocks", "reason", why)
		}
		leading, cut, keys = false, nil, nil
		cfgInFlight, cfgSettled = 0, ""
		timer.Stop()
		n.mu.Lock()
		clear(n.proposed)
		clear(n.ordering) // a new leadership's barrier applies whatever of it was committed
		n.mu.Unlock()
		n.failAll(fmt.Errorf("%w: %s; resubmit", ErrUnavailable, why))
	}
	lead := func() bool {
		if leading {
			return true
		}
		if n.raft.Leader() != n.raft.ID() {
			return false
		}
		// A barrier: once our no-op is applied, every entry before it is too.
		pctx, cancel := context.WithTimeout(ctx, n.cfg.StallTimeout)
		_, err := n.raft.ProposeWait(pctx, noopEntry)
		cancel()
		if err != nil {
			n.log.Warn("leader barrier failed", "err", err)
			return false
		}
		h := n.store.LastHeader()
		tipNum, tipHash = h.Number, block.HeaderHash(h)
		cut, _ = block.NewCutter(n.BatchConfig())
		leading = true
		lastHeight, progressAt = n.store.Height(), n.cfg.Now()
		n.log.Info("cutting blocks as leader", "next_block", tipNum+1)
		return true
	}
	// inFlight: blocks proposed by this leader and not yet stored.
	inFlight := func() int {
		if h := n.store.Height(); tipNum >= h {
			return int(min(tipNum-h+1, 1<<20))
		}
		return 0
	}
	propose := func(batch [][]byte) {
		if len(batch) == 0 || !leading {
			return
		}
		b := block.New(tipNum+1, tipHash, batch)
		data, err := encodeBlockEntry(b)
		if err == nil && len(keys) >= len(batch) {
			n.mu.Lock()
			n.proposed[b.Header.Number] = proposedBlock{dataHash: b.Header.DataHash, keys: keys[:len(batch):len(batch)],
				entry: data, blk: b}
			n.mu.Unlock()
			keys = keys[len(batch):]
		}
		if err == nil {
			err = n.raft.Propose(ctx, data)
		}
		if err != nil {
			stepDown(fmt.Sprintf("proposing block %d failed: %v", tipNum+1, err))
			return
		}
		tipNum, tipHash = b.Header.Number, block.HeaderHash(b.Header)
	}
	// cutDue proposes the pending batch if it is due (timeout, or idle
	// when adaptive).
	cutDue := func() {
		if cut == nil {
			return
		}
		if n.cfg.FixedBatches {
			propose(cut.Tick(n.cfg.Now()))
		} else {
			propose(cut.Due(n.cfg.Now(), inFlight()))
		}
	}
	add := func(sub submission) {
		// Order only what a client still waits for, once. A submission
		// whose waiter was answered meanwhile is stale: failed (failAll on
		// a step-down or a failed barrier, while it sat in submitCh; its
		// client was told to resubmit and may have, which queued a second
		// copy), timed out, or committed (a resubmission admitted before
		// this leader applied the block holding its original: committed()
		// answered it SUCCESS). Ordering it would put the tx id in the
		// chain twice (issue #11's simulation, seeds 2 and 6). n.ordering
		// keeps the key taken until its block is stored or this leader
		// steps down, whatever happens to the waiter.
		n.mu.Lock()
		_, ordering := n.ordering[sub.key]
		live := n.waiters[sub.key] == sub.w && !ordering && !n.recent.has(sub.key)
		if live {
			n.ordering[sub.key] = struct{}{}
		}
		n.mu.Unlock()
		if !live {
			return
		}
		keys = append(keys, sub.key)
		batches, _ := cut.Ordered(sub.raw, n.cfg.Now())
		for _, b := range batches {
			propose(b)
		}
	}
	// proposeConfig orders a CONFIG block when the current policy version
	// changes the channel config (configtx.go): the pending envelopes are
	// cut first, then the config block goes alone.
	proposeConfig := func() {
		if !n.cfg.ConfigBlocks || !leading || cfgInFlight != 0 {
			return
		}
		p := n.observePolicy()
		if p == nil {
			return
		}
		settled := fmt.Sprintf("%s+%d", p.Hash(), len(p.ConfigSignatures()))
		if settled == cfgSettled {
			return
		}
		cfgSettled = settled
		if floor := n.policyFloor(); p.Version() < floor {
			n.log.Warn("policy version not ordered as a CONFIG block: this leader's policy is older than the version the log already applied; "+
				"it waits for its policy folder to have that version", "policy_version", p.Version(), "applied_version", floor)
			return
		}
		u, err := n.nextConfig(p)
		if errors.Is(err, channelconfig.ErrNoChange) {
			return
		}
		if err != nil {
			n.log.Error("policy version not ordered as a CONFIG block: the channel config stays as it is", "policy_version", p.Version(), "err", err)
			return
		}
		propose(cut.Cut())
		if !leading {
			return
		}
		b, err := n.configBlock(u, p, tipNum+1, tipHash)
		var data []byte
		if err == nil {
			data, err = encodeConfigEntry(b, p.Version(), p.Hash())
		}
		if err != nil {
			n.log.Error("policy version not ordered as a CONFIG block: the channel config stays as it is", "policy_version", p.Version(), "err", err)
			return
		}
		if err := n.raft.Propose(ctx, data); err != nil {
			stepDown(fmt.Sprintf("proposing config block %d failed: %v", tipNum+1, err))
			return
		}
		tipNum, tipHash = b.Header.Number, block.HeaderHash(b.Header)
		cfgInFlight = tipNum
		n.log.Info("CONFIG block proposed", "number", tipNum, "sequence", u.Config.Sequence, "policy_version", p.Version())
	}
	// configStored ends a config block's flight once the store holds it:
	// the blocks after it are cut with the config it put in force.
	configStored := func() {
		if cfgInFlight == 0 || n.store.Height() <= cfgInFlight {
			return
		}
		if lc := n.LastConfig(); lc != cfgInFlight {
			n.log.Error("the CONFIG block this leader proposed was not stored", "number", cfgInFlight, "last_config", lc)
		}
		cfgInFlight = 0
		if cut != nil {
			if err := cut.SetConfig(n.BatchConfig()); err != nil {
				n.log.Error("batch parameters of the config in force not applied", "err", err)
			}
		}
	}
	arm := func() {
		timer.Stop()
		if cut == nil {
			return
		}
		if d, ok := cut.Deadline(); ok {
			timer.Reset(max(d.Sub(n.cfg.Now()), 0))
		}
	}
	for {
		submitCh := n.submitCh
		if cfgInFlight != 0 {
			submitCh = nil // as Fabric: nothing is ordered while a config block is in flight
		}
		select {
		case <-ctx.Done():
			return nil
		case <-n.leaderCh:
			if n.raft.Leader() != n.raft.ID() {
				stepDown("lost raft leadership")
			} else if lead() {
				proposeConfig()
			}
		case <-n.cfgtx.poke:
			if lead() {
				proposeConfig()
			}
			arm()
		case sub := <-submitCh:
			if !lead() {
				n.failAll(fmt.Errorf("%w: not the leader (raft leader is %d)", ErrUnavailable, n.raft.Leader()))
				continue
			}
			add(sub)
			// Take what else is queued before deciding, so that a block cut
			// at idle carries every envelope already admitted.
		drain:
			for range cap(n.submitCh) {
				select {
				case sub := <-n.submitCh:
					if !leading {
						n.failAll(fmt.Errorf("%w: stopped leading; resubmit", ErrUnavailable))
						break drain
					}
					add(sub)
				default:
					break drain
				}
			}
			cutDue()
			arm()
		case <-n.applied:
			configStored()
			proposeConfig()
			cutDue()
			arm()
		case <-timer.C:
			cutDue()
			arm()
		case <-stall.C:
			n.observePolicy()
			configStored()
			proposeConfig()
			now := n.cfg.Now()
			if h := n.store.Height(); h != lastHeight || !leading || h > tipNum {
				lastHeight, progressAt = h, now
			} else if now.Sub(progressAt) > n.cfg.StallTimeout {
				stepDown(fmt.Sprintf("proposed block %d not committed within %v", h, n.cfg.StallTimeout))
				lastHeight, progressAt = h, now
			}
		}
	}
}

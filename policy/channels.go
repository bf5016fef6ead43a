package policy

import (
	"fmt"
	"slices"
	"sync"
)

// Channels of a policy (ledger.channels, or the single ledger.channel).
//
// A channel's ordering node works with a view of the policy
// (ForChannel): the same version, hash and signatures, with ledger set to
// that channel alone (its consenters and batch parameters) and the
// members narrowed to the channel's members. Everything built from a
// view therefore stays per channel: the channel config derived from it
// (member orgs, consenters), raft membership, and who may broadcast and
// read (a certificate of a member outside the channel is not a member's).

// viewCache holds the channel views of one Policy value, built once each.
type viewCache struct {
	mu    sync.Mutex
	views map[string]*Policy
}

// Channels returns the names of the channels the ledger serves, in
// document order: those of ledger.channels, or the single ledger.channel.
func (p *Policy) Channels() []string {
	l := &p.d.Ledger
	if len(l.Channels) == 0 {
		return []string{l.Channel}
	}
	out := make([]string, 0, len(l.Channels))
	for _, c := range l.Channels {
		out = append(out, c.Name)
	}
	return out
}

// Channel returns the channel this policy is a view of (ForChannel), ""
// for a whole policy with ledger.channels.
func (p *Policy) Channel() string { return p.d.Ledger.Channel }

// ChannelConsenters returns the consenter member ids of channel name, nil
// if the policy has no such channel.
func (p *Policy) ChannelConsenters(name string) []string {
	if v, err := p.ForChannel(name); err == nil {
		return slices.Clone(v.d.Ledger.Consenters)
	}
	return nil
}

// ForChannel returns the view of p for channel name (see above). Without
// ledger.channels, the view of ledger.channel is p itself, so a
// single-channel ledger is unchanged. A view of a view is itself.
func (p *Policy) ForChannel(name string) (*Policy, error) {
	l := &p.d.Ledger
	if len(l.Channels) == 0 {
		if name != l.Channel {
			return nil, fmt.Errorf("%w: policy version %d has no channel %q (ledger.channel is %q)", ErrNoChannel, p.d.Version, name, l.Channel)
		}
		return p, nil
	}
	i := slices.IndexFunc(l.Channels, func(c *Channel) bool { return c.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("%w: policy version %d has no channel %q in ledger.channels (%v)", ErrNoChannel, p.d.Version, name, p.Channels())
	}
	c := p.views
	if c == nil { // a Policy made without newPolicy: build each time
		return p.view(l.Channels[i]), nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v := c.views[name]; v != nil {
		return v, nil
	}
	v := p.view(l.Channels[i])
	if c.views == nil {
		c.views = map[string]*Policy{}
	}
	c.views[name] = v
	return v, nil
}

// view builds the view of channel c.
func (p *Policy) view(c *Channel) *Policy {
	d := *p.d
	d.Ledger = Ledger{Channel: c.Name, BatchSize: p.d.Ledger.BatchSize, BatchTimeout: p.d.Ledger.BatchTimeout,
		Timeout: p.d.Ledger.Timeout, Consenters: slices.Clone(c.Consenters)}
	if c.BatchSize != nil {
		d.Ledger.BatchSize = *c.BatchSize
	}
	if c.BatchTimeout != "" {
		d.Ledger.BatchTimeout, d.Ledger.Timeout = c.BatchTimeout, c.Timeout
	}
	if len(c.Members) > 0 {
		d.Members = slices.DeleteFunc(slices.Clone(p.d.Members), func(m *Member) bool { return !slices.Contains(c.Members, m.ID) })
	}
	v := newPolicy(p.doc, &d, p.sigs)
	v.cfgSigs = p.cfgSigs
	v.views = nil // a view of a view is itself (Ledger.Channels is empty)
	v.whole = p
	return v
}

// Whole returns the policy a channel view was made from (ForChannel), or
// p itself.
func (p *Policy) Whole() *Policy {
	if p.whole != nil {
		return p.whole
	}
	return p
}

// Retain is the view of a channel that p no longer lists, kept under p:
// last is the channel's last view (ForChannel of an earlier version). It
// has last's ledger section and members, each member (its CAs, CRLs) and
// the revocations as p has them; a member p no longer has is left out,
// from the consenters too. A node that keeps serving a dropped channel's
// blocks thus follows later revocations without ordering anything new.
func (p *Policy) Retain(last *Policy) *Policy {
	d := *p.d
	d.Ledger = last.d.Ledger
	d.Ledger.Channels = nil
	d.Ledger.Consenters = slices.DeleteFunc(slices.Clone(last.d.Ledger.Consenters), func(id string) bool { return p.members[id] == nil })
	d.Members = slices.DeleteFunc(slices.Clone(p.d.Members), func(m *Member) bool { return last.members[m.ID] == nil })
	v := newPolicy(p.doc, &d, p.sigs)
	v.cfgSigs = p.cfgSigs
	v.views = nil
	v.whole = p
	return v
}

package channelconfig

// Channel config updates: a new policy version becomes the next channel
// config and the ConfigUpdate delta that leads to it.
//
// The next config is built by ChannelGroup (the genesis code path) from the
// new policy, then given element versions the way a Fabric orderer does when
// it applies the delta: an element whose content (value bytes, policy, or
// mod_policy) changed gets its in-force version + 1, an added element 0, an
// unchanged one keeps its version, and a group's version goes up by one when
// the set of its keys or its mod_policy changes.
//
// The delta follows configtxlator compute_update (Fabric 2.5): the read set
// names, by version only, what the write set depends on, and the write set
// carries every changed element with its new version. A group whose key set
// is unchanged appears in both sets at its current version, holding only
// its changed members; a group whose key set changed appears in the read
// set at its version and in the write set at version + 1, holding every key
// it keeps (unchanged ones by version only).

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/policy"
)

// ErrNoChange: the new policy version changes nothing the channel config
// mirrors; no CONFIG block is due.
var ErrNoChange = errors.New("the policy version changes nothing in the channel config")

// Update is the next channel config and the delta that leads to it.
type Update struct {
	// Config is the next config: Sequence one higher than the config in force.
	Config *common.Config
	// ConfigUpdate is the delta, as configtxlator compute_update writes it
	// (ChannelId set, no isolated data).
	ConfigUpdate *common.ConfigUpdate
}

// Next returns the channel config that follows inForce (the Config of the
// channel's last CONFIG block) when the channel is to become next, or an
// error wrapping ErrNoChange when the two hold the same content.
func Next(inForce *common.Config, next Config) (*Update, error) {
	if inForce.GetChannelGroup() == nil {
		return nil, fmt.Errorf("%w: the config in force has no channel group", ErrConfig)
	}
	root, err := ChannelGroup(next)
	if err != nil {
		return nil, err
	}
	readSet, writeSet, changed := diffGroup(inForce.ChannelGroup, root)
	if !changed {
		return nil, fmt.Errorf("channel %q at sequence %d: %w", next.ChannelID, inForce.Sequence, ErrNoChange)
	}
	setVersions(inForce.ChannelGroup, root)
	return &Update{
		Config:       &common.Config{Sequence: inForce.Sequence + 1, ChannelGroup: root},
		ConfigUpdate: &common.ConfigUpdate{ChannelId: next.ChannelID, ReadSet: readSet, WriteSet: writeSet},
	}, nil
}

// NextFromPolicy is Next for the channel config a policy version mirrors
// (FromPolicy). A consenter member's entry is its members[].ledger_consenter
// when the policy gives one (so every member derives the same bytes); else
// the one in consenters; else its consenter of the config in force, found
// by its client TLS certificate chaining to the member's TLS CA (or CA,
// when the member names no TLS CA). Raft options stay as in force. A
// policy with ledger.channels derives the config of channelID's view
// (policy.Policy.ForChannel), so 'memberd policy sign --config-block' and
// 'policy verify --config-block' work on one channel's config block.
func NextFromPolicy(inForce *common.Config, channelID string, p *policy.Policy, consenters map[string]Consenter) (*Update, error) {
	cur, err := ParseConfig(channelID, inForce)
	if err != nil {
		return nil, fmt.Errorf("channel config in force: %w", err)
	}
	if len(p.Ledger().Channels) > 0 {
		// A policy with ledger.channels: the channel's view of it.
		v, err := p.ForChannel(channelID)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		p = v
	}
	if got := p.Ledger().Channel; got != channelID {
		return nil, fmt.Errorf("%w: policy version %d names channel %q, the config in force is of channel %q; a channel cannot be renamed",
			ErrConfig, p.Version(), got, channelID)
	}
	css := maps.Clone(consenters)
	if css == nil {
		css = map[string]Consenter{}
	}
	for _, m := range p.Consenters() {
		if _, ok := css[m.ID]; ok {
			continue
		}
		if _, ok := PolicyConsenter(m); ok {
			continue // FromPolicy takes it from the policy
		}
		cs, ok := ConsenterOf(cur.Config.Consenters, m)
		if !ok {
			return nil, fmt.Errorf("%w: policy version %d: consenter member %q is not a consenter of channel %q in force, and the policy gives no TLS certificate for it: add members[].ledger_consenter.tls_cert (the certificate its ledger node presents) for %q",
				ErrConfig, p.Version(), m.ID, channelID, m.ID)
		}
		css[m.ID] = cs
	}
	next, err := FromPolicy(p, css)
	if err != nil {
		return nil, fmt.Errorf("policy version %d: %w", p.Version(), err)
	}
	next.Raft = cur.Config.Raft
	return Next(inForce, next)
}

// ConsenterOf finds m's consenter among consenters: the one whose client
// TLS certificate chains to m's TLS CA (or CA, when m names no TLS CA).
func ConsenterOf(consenters []Consenter, m *policy.Member) (Consenter, bool) {
	pool := x509.NewCertPool()
	cas := m.TLSCA
	if len(cas) == 0 {
		cas = m.CA
	}
	for _, c := range cas {
		pool.AddCert(c)
	}
	for _, cs := range consenters {
		cert, err := parsePEMCert(cs.ClientTLSCert)
		if err != nil {
			continue
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: cert.NotBefore.Add(1),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			return cs, true
		}
	}
	return Consenter{}, false
}

// diffMap compares one of a group's maps (values or policies): the entries
// changed or added go to write (with their new version), unchanged ones to
// same (version only); grew is true when a key was added or removed.
func diffMap[V proto.Message](old, cur map[string]V, equal func(a, b V) bool, version func(V) uint64, withVersion func(V, uint64) V,
) (write, same map[string]V, grew bool) {
	write, same = map[string]V{}, map[string]V{}
	for k, o := range old {
		n, ok := cur[k]
		switch {
		case !ok:
			grew = true
		case equal(o, n):
			same[k] = withVersion(*new(V), version(o))
		default:
			write[k] = withVersion(n, version(o)+1)
		}
	}
	for k, n := range cur {
		if _, ok := old[k]; !ok {
			grew = true
			write[k] = withVersion(n, 0)
		}
	}
	return write, same, grew
}

func valueWith(v *common.ConfigValue, ver uint64) *common.ConfigValue {
	return &common.ConfigValue{Version: ver, ModPolicy: v.GetModPolicy(), Value: v.GetValue()}
}

func policyWith(p *common.ConfigPolicy, ver uint64) *common.ConfigPolicy {
	return &common.ConfigPolicy{Version: ver, ModPolicy: p.GetModPolicy(), Policy: p.GetPolicy()}
}

func sameValue(a, b *common.ConfigValue) bool {
	return a.GetModPolicy() == b.GetModPolicy() && bytes.Equal(a.GetValue(), b.GetValue())
}

func samePolicy(a, b *common.ConfigPolicy) bool {
	return a.GetModPolicy() == b.GetModPolicy() && proto.Equal(a.GetPolicy(), b.GetPolicy())
}

// diffGroup returns the read and write sets that turn old into cur, and
// whether anything differs. Versions in cur are not read.
func diffGroup(old, cur *common.ConfigGroup) (read, write *common.ConfigGroup, changed bool) {
	wv, sv, gv := diffMap(old.GetValues(), cur.GetValues(), sameValue, (*common.ConfigValue).GetVersion, valueWith)
	wp, sp, gp := diffMap(old.GetPolicies(), cur.GetPolicies(), samePolicy, (*common.ConfigPolicy).GetVersion, policyWith)
	rg, wg, sg := map[string]*common.ConfigGroup{}, map[string]*common.ConfigGroup{}, map[string]*common.ConfigGroup{}
	gg := false
	for k, o := range old.GetGroups() {
		n, ok := cur.GetGroups()[k]
		if !ok {
			gg = true
			continue
		}
		r, w, ch := diffGroup(o, n)
		if ch {
			rg[k], wg[k] = r, w
		} else {
			sg[k] = r
		}
	}
	for k, n := range cur.GetGroups() {
		if _, ok := old.GetGroups()[k]; ok {
			continue
		}
		gg = true
		_, w, _ := diffGroup(&common.ConfigGroup{}, n)
		wg[k] = &common.ConfigGroup{ModPolicy: n.GetModPolicy(), Values: w.Values, Policies: w.Policies, Groups: w.Groups}
	}
	ver := old.GetVersion()
	if !gv && !gp && !gg && old.GetModPolicy() == cur.GetModPolicy() {
		if len(wv)+len(wp)+len(rg)+len(wg) == 0 {
			return &common.ConfigGroup{Version: ver}, &common.ConfigGroup{Version: ver}, false
		}
		return &common.ConfigGroup{Version: ver, Groups: rg},
			&common.ConfigGroup{Version: ver, Values: wv, Policies: wp, Groups: wg}, true
	}
	// The key set changed: the group is rewritten whole, its unchanged
	// members named by version.
	maps.Copy(wv, sv)
	maps.Copy(wp, sp)
	maps.Copy(rg, sg)
	maps.Copy(wg, sg)
	return &common.ConfigGroup{Version: ver, Values: sv, Policies: sp, Groups: rg},
		&common.ConfigGroup{Version: ver + 1, ModPolicy: cur.GetModPolicy(), Values: wv, Policies: wp, Groups: wg}, true
}

// setVersions gives the elements of cur (freshly built, all versions 0)
// the versions they have once the delta from old is applied.
func setVersions(old, cur *common.ConfigGroup) {
	if old == nil {
		return
	}
	keysChanged := old.GetModPolicy() != cur.GetModPolicy() ||
		!sameKeys(old.GetValues(), cur.GetValues()) || !sameKeys(old.GetPolicies(), cur.GetPolicies()) || !sameKeys(old.GetGroups(), cur.GetGroups())
	cur.Version = old.GetVersion()
	if keysChanged {
		cur.Version++
	}
	for k, v := range cur.Values {
		if o, ok := old.Values[k]; ok {
			v.Version = o.GetVersion()
			if !sameValue(o, v) {
				v.Version++
			}
		}
	}
	for k, p := range cur.Policies {
		if o, ok := old.Policies[k]; ok {
			p.Version = o.GetVersion()
			if !samePolicy(o, p) {
				p.Version++
			}
		}
	}
	for k, g := range cur.Groups {
		setVersions(old.Groups[k], g)
	}
}

func sameKeys[V any](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

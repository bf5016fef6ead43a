package policy

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// Diff says what a version changes relative to another. Subscribers get one
// with every applied version; Verify derives the change kinds from it.
type Diff struct {
	// From and To are the versions compared (From is 0 for the first policy).
	From, To uint64
	// Kinds of change present, in AllKinds order.
	Kinds []ChangeKind

	MembersAdded   []string
	MembersRemoved []string
	// MembersChanged: member id -> changed fields (name, msp_id, overlay_ip,
	// roles, ca_certs, tls_ca_certs, crls, ...).
	MembersChanged map[string][]string
	// AdminsChanged: member id -> "+key", "-key", "~key" entries.
	AdminsChanged map[string][]string

	RelaysAdded, RelaysRemoved, RelaysChanged []string

	// ACLAdded and ACLRemoved are the rules (as text) that appear only in the
	// new or only in the old version.
	ACLAdded, ACLRemoved []string

	// LedgerChanged names changed ledger fields (channel,
	// batch_size.max_message_count, ..., batch_timeout).
	LedgerChanged                      []string
	ConsentersAdded, ConsentersRemoved []string
	// ChannelConsenters lists the consenter changes of each channel of
	// ledger.channels present in both versions ("alpha: +m3 -m1"); they
	// count as consenters_changed. Added and removed channels, and the
	// other changes of a channel, are in LedgerChanged.
	ChannelConsenters []string

	RevocationsAdded, RevocationsRemoved []string

	AmendmentChanged bool
	// MetadataChanged names changed top-level fields (description, overlay_prefix).
	MetadataChanged []string
}

// Has reports whether the diff contains change kind k.
func (d *Diff) Has(k ChangeKind) bool { return slices.Contains(d.Kinds, k) }

// Empty reports whether nothing changes.
func (d *Diff) Empty() bool { return len(d.Kinds) == 0 }

// Compare computes what changes from old to new. old may be nil (everything
// in new is added).
func Compare(old, new *Policy) *Diff {
	od := &Document{}
	if old != nil {
		od = old.d
	}
	nd := new.d
	d := &Diff{From: od.Version, To: nd.Version, MembersChanged: map[string][]string{}, AdminsChanged: map[string][]string{}}

	om, nm := indexMembers(od), indexMembers(nd)
	for _, m := range nd.Members {
		o, ok := om[m.ID]
		if !ok {
			d.MembersAdded = append(d.MembersAdded, m.ID)
			continue
		}
		if f := memberFields(o, m); len(f) > 0 {
			d.MembersChanged[m.ID] = f
		}
		if a := adminChanges(o, m); len(a) > 0 {
			d.AdminsChanged[m.ID] = a
		}
	}
	for _, m := range od.Members {
		if _, ok := nm[m.ID]; !ok {
			d.MembersRemoved = append(d.MembersRemoved, m.ID)
		}
	}

	or, nr := map[string]*Relay{}, map[string]*Relay{}
	for _, r := range od.Relays {
		or[r.ID] = r
	}
	for _, r := range nd.Relays {
		nr[r.ID] = r
		if o, ok := or[r.ID]; !ok {
			d.RelaysAdded = append(d.RelaysAdded, r.ID)
		} else if !relayEqual(o, r) {
			d.RelaysChanged = append(d.RelaysChanged, r.ID)
		}
	}
	for _, r := range od.Relays {
		if _, ok := nr[r.ID]; !ok {
			d.RelaysRemoved = append(d.RelaysRemoved, r.ID)
		}
	}

	d.ACLAdded, d.ACLRemoved = setDiff(aclStrings(od.ACL), aclStrings(nd.ACL))
	d.ConsentersAdded, d.ConsentersRemoved = setDiff(od.Ledger.Consenters, nd.Ledger.Consenters)
	d.LedgerChanged = ledgerFields(&od.Ledger, &nd.Ledger)
	d.LedgerChanged, d.ChannelConsenters = channelChanges(d.LedgerChanged, &od.Ledger, &nd.Ledger)
	d.RevocationsAdded, d.RevocationsRemoved = setDiff(revocationStrings(od), revocationStrings(nd))
	d.AmendmentChanged = !amendmentEqual(&od.Amendment, &nd.Amendment)
	if old != nil {
		if od.Description != nd.Description {
			d.MetadataChanged = append(d.MetadataChanged, "description")
		}
		if od.OverlayPrefix != nd.OverlayPrefix {
			d.MetadataChanged = append(d.MetadataChanged, "overlay_prefix")
		}
	}

	add := func(k ChangeKind, cond bool) {
		if cond {
			d.Kinds = append(d.Kinds, k)
		}
	}
	add(KindMemberAdded, len(d.MembersAdded) > 0)
	add(KindMemberRemoved, len(d.MembersRemoved) > 0)
	add(KindMemberChanged, len(d.MembersChanged) > 0)
	add(KindAdminsChanged, len(d.AdminsChanged) > 0)
	add(KindRelaysChanged, len(d.RelaysAdded)+len(d.RelaysRemoved)+len(d.RelaysChanged) > 0)
	add(KindACLChanged, len(d.ACLAdded)+len(d.ACLRemoved) > 0)
	add(KindLedgerChanged, len(d.LedgerChanged) > 0)
	add(KindConsentersChanged, len(d.ConsentersAdded)+len(d.ConsentersRemoved)+len(d.ChannelConsenters) > 0)
	add(KindRevocationsChanged, len(d.RevocationsAdded)+len(d.RevocationsRemoved) > 0)
	add(KindAmendmentChanged, d.AmendmentChanged && old != nil)
	add(KindMetadataChanged, len(d.MetadataChanged) > 0)
	return d
}

func indexMembers(d *Document) map[string]*Member {
	m := make(map[string]*Member, len(d.Members))
	for _, x := range d.Members {
		m[x.ID] = x
	}
	return m
}

func certsEqual(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return bytes.Equal(x.Raw, y.Raw) })
}

func memberFields(o, n *Member) []string {
	var f []string
	if o.Name != n.Name {
		f = append(f, "name")
	}
	if o.MSPID != n.MSPID {
		f = append(f, "msp_id")
	}
	if o.Addr != n.Addr {
		f = append(f, "overlay_ip")
	}
	or, nr := rolesSorted(o.Roles), rolesSorted(n.Roles)
	if !slices.Equal(or, nr) {
		f = append(f, "roles")
	}
	if !certsEqual(o.CA, n.CA) {
		f = append(f, "ca_certs")
	}
	if !certsEqual(o.TLSCA, n.TLSCA) {
		f = append(f, "tls_ca_certs")
	}
	if !slices.EqualFunc(o.CRL, n.CRL, func(x, y *CRL) bool { return bytes.Equal(x.List.Raw, y.List.Raw) }) {
		f = append(f, "crls")
	}
	if !slices.Equal(o.LedgerEndpoints, n.LedgerEndpoints) {
		f = append(f, "ledger_endpoints")
	}
	if !ledgerConsenterEqual(o.LedgerConsenter, n.LedgerConsenter) {
		f = append(f, "ledger_consenter")
	}
	return f
}

func rolesSorted(r []Role) []Role {
	s := slices.Clone(r)
	slices.Sort(s)
	return s
}

func adminChanges(o, n *Member) []string {
	oa := map[string]*Admin{}
	for _, a := range o.Admins {
		oa[a.KeyID] = a
	}
	var out []string
	seen := map[string]bool{}
	for _, a := range n.Admins {
		seen[a.KeyID] = true
		prev, ok := oa[a.KeyID]
		switch {
		case !ok:
			out = append(out, "+"+a.KeyID)
		case prev.SPKI != a.SPKI || !prev.Expires.Equal(a.Expires) || prev.Certificate != a.Certificate:
			out = append(out, "~"+a.KeyID)
		}
	}
	for _, a := range o.Admins {
		if !seen[a.KeyID] {
			out = append(out, "-"+a.KeyID)
		}
	}
	return out
}

func relayEqual(a, b *Relay) bool {
	return a.Address == b.Address && bytes.Equal(a.Pin, b.Pin) && a.Operator == b.Operator && certsEqual(a.CA, b.CA)
}

func aclString(r *ACLRule) string {
	ports := make([]string, len(r.Ports))
	for i, p := range r.Ports {
		ports[i] = p.String()
	}
	return fmt.Sprintf("%s -> %s ports %s", strings.Join(r.From, ","), strings.Join(r.To, ","), strings.Join(ports, ","))
}

func aclStrings(rules []*ACLRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = aclString(r)
	}
	return out
}

func revocationStrings(d *Document) []string {
	r := &d.Revocations
	var out []string
	for _, m := range d.Members {
		for _, crl := range m.CRL {
			for _, e := range crl.List.RevokedCertificateEntries {
				out = append(out, fmt.Sprintf("certificate %s serial %s (CRL of CA %q)", m.ID, e.SerialNumber, crl.CA.Subject.CommonName))
			}
		}
	}
	for _, c := range r.Certificates {
		if c.spki != nil {
			out = append(out, fmt.Sprintf("certificate spki_sha256 %x", c.spki))
		} else {
			out = append(out, fmt.Sprintf("certificate %s serial %s", c.Member, c.serial))
		}
	}
	for _, a := range r.AdminKeys {
		out = append(out, "admin key "+a.String())
	}
	return out
}

// setDiff returns the strings only in b (added) and only in a (removed).
func setDiff(a, b []string) (added, removed []string) {
	in := func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range s {
			m[x] = true
		}
		return m
	}
	am, bm := in(a), in(b)
	for _, x := range b {
		if !am[x] && !slices.Contains(added, x) {
			added = append(added, x)
		}
	}
	for _, x := range a {
		if !bm[x] && !slices.Contains(removed, x) {
			removed = append(removed, x)
		}
	}
	return added, removed
}

func ledgerFields(o, n *Ledger) []string {
	var f []string
	if o.Channel != n.Channel {
		f = append(f, "channel")
	}
	if o.BatchSize.MaxMessageCount != n.BatchSize.MaxMessageCount {
		f = append(f, "batch_size.max_message_count")
	}
	if o.BatchSize.AbsoluteMaxBytes != n.BatchSize.AbsoluteMaxBytes {
		f = append(f, "batch_size.absolute_max_bytes")
	}
	if o.BatchSize.PreferredMaxBytes != n.BatchSize.PreferredMaxBytes {
		f = append(f, "batch_size.preferred_max_bytes")
	}
	if o.Timeout != n.Timeout {
		f = append(f, "batch_timeout")
	}
	return f
}

// channelChanges appends to f what changes in ledger.channels ("+ channel
// beta", "- channel beta", "channel alpha: members, batch_size") and
// returns the consenter changes of the channels in both versions.
func channelChanges(f []string, o, n *Ledger) ([]string, []string) {
	byName := func(l *Ledger) map[string]*Channel {
		m := map[string]*Channel{}
		for _, c := range l.Channels {
			m[c.Name] = c
		}
		return m
	}
	om, nm := byName(o), byName(n)
	var cons []string
	for _, c := range n.Channels {
		oc, ok := om[c.Name]
		if !ok {
			f = append(f, "+ channel "+c.Name)
			continue
		}
		var what []string
		if !slices.Equal(oc.Members, c.Members) {
			what = append(what, "members")
		}
		if !batchEqual(oc.BatchSize, c.BatchSize) {
			what = append(what, "batch_size")
		}
		if oc.Timeout != c.Timeout {
			what = append(what, "batch_timeout")
		}
		if len(what) > 0 {
			f = append(f, "channel "+c.Name+": "+strings.Join(what, ", "))
		}
		added, removed := setDiff(oc.Consenters, c.Consenters)
		if len(added)+len(removed) > 0 {
			var x []string
			for _, a := range added {
				x = append(x, "+"+a)
			}
			for _, r := range removed {
				x = append(x, "-"+r)
			}
			cons = append(cons, c.Name+": "+strings.Join(x, " "))
		}
	}
	for _, c := range o.Channels {
		if _, ok := nm[c.Name]; !ok {
			f = append(f, "- channel "+c.Name)
		}
	}
	return f, cons
}

func batchEqual(a, b *BatchSize) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func amendmentEqual(a, b *Amendment) bool {
	return a.Default == b.Default && maps.Equal(a.Rules, b.Rules)
}

// String renders the diff for people, one change per line.
func (d *Diff) String() string {
	if d.Empty() {
		return fmt.Sprintf("version %d -> %d: no change\n", d.From, d.To)
	}
	var b strings.Builder
	kinds := make([]string, len(d.Kinds))
	for i, k := range d.Kinds {
		kinds[i] = string(k)
	}
	fmt.Fprintf(&b, "version %d -> %d: %s\n", d.From, d.To, strings.Join(kinds, ", "))
	list := func(label string, xs []string) {
		for _, x := range xs {
			fmt.Fprintf(&b, "  %s %s\n", label, x)
		}
	}
	list("+ member", d.MembersAdded)
	list("- member", d.MembersRemoved)
	for _, id := range sortedKeys(d.MembersChanged) {
		fmt.Fprintf(&b, "  ~ member %s: %s\n", id, strings.Join(d.MembersChanged[id], ", "))
	}
	for _, id := range sortedKeys(d.AdminsChanged) {
		fmt.Fprintf(&b, "  ~ admins of %s: %s\n", id, strings.Join(d.AdminsChanged[id], " "))
	}
	list("+ relay", d.RelaysAdded)
	list("- relay", d.RelaysRemoved)
	list("~ relay", d.RelaysChanged)
	list("+ acl", d.ACLAdded)
	list("- acl", d.ACLRemoved)
	list("~ ledger", d.LedgerChanged)
	list("+ consenter", d.ConsentersAdded)
	list("- consenter", d.ConsentersRemoved)
	list("~ consenters of channel", d.ChannelConsenters)
	list("+ revoked", d.RevocationsAdded)
	list("- revoked", d.RevocationsRemoved)
	if d.Has(KindAmendmentChanged) {
		b.WriteString("  ~ amendment rules\n")
	}
	list("~", d.MetadataChanged)
	return b.String()
}

func sortedKeys(m map[string][]string) []string {
	k := make([]string, 0, len(m))
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

func ledgerConsenterEqual(a, b *LedgerConsenter) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Port == b.Port && bytes.Equal(a.Cert.Raw, b.Cert.Raw)
}

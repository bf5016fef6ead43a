package tunnel

import (
	"crypto/x509"
	"net/netip"
)

// Member is one consortium member as the tunnel sees it: its id and its
// overlay address inside the tunnel.
type Member struct {
	ID   string
	Addr netip.Addr
}

// Authority is an immutable snapshot of who may be in the tunnel, as decided
// by the current governance policy. The tunnel owns this interface; the
// policy package (or the wiring in cmd) adapts a *policy.Policy to it. A new
// snapshot is handed over with Device.SetAuthority; the tunnel never mutates
// or caches anything derived from it beyond the next SetAuthority.
type Authority interface {
	// Members lists every member of the consortium (including this one),
	// with its overlay address. Ids and addresses are unique.
	Members() []Member
	// VerifyMemberCert reports whether chain (leaf first, then any
	// intermediates) is a currently valid, unrevoked identity of member,
	// i.e. it chains to one of that member's CAs in the policy.
	VerifyMemberCert(member string, chain []*x509.Certificate) error
	// Allowed reports whether member from may open a connection to port on
	// member to.
	Allowed(from, to string, port uint16) bool
}

// memberIndex is a lookup built once per Authority snapshot.
type memberIndex struct {
	auth   Authority
	byID   map[string]netip.Addr
	byAddr map[netip.Addr]string
}

func newMemberIndex(a Authority) *memberIndex {
	mi := &memberIndex{auth: a, byID: map[string]netip.Addr{}, byAddr: map[netip.Addr]string{}}
	for _, m := range a.Members() {
		addr := m.Addr.Unmap()
		mi.byID[m.ID] = addr
		mi.byAddr[addr] = m.ID
	}
	return mi
}

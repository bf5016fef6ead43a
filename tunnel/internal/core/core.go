// Package core is the tunnel's key-rotation and peer-state machine: a pure
// core in the way etcd raft's is. It does no I/O, starts no goroutines and
// reads no clock: the driver (tunnel.Device) verifies attestations, feeds
// events to Step with the current time, and applies what Step returns:
// control messages to send, a WireGuard configuration delta (UAPI), and
// pauses of the outgoing path. The protocol itself is described on Core.
//
// Tests drive it with the scripts in testdata/ (see script_test.go).
package core

import (
	"errors"
	"net/netip"
	"sort"
	"time"
)

// Key is a WireGuard public or private key.
type Key [32]byte

// Att is a verified key attestation of another member, as the core sees it.
type Att struct {
	Member    string
	Key       Key
	NotBefore time.Time
	Expiry    time.Time
	// Signer identifies the identity certificate that signed it (its raw
	// bytes): the same key re-signed by a new identity replaces the old
	// attestation.
	Signer string
	// Ext is the driver's own record (the parsed attestation); the core
	// hands it back in PeerInfo and never looks at it.
	Ext any
}

// Own is one of this member's own keys with its encoded attestation.
type Own struct {
	Private, Public Key
	Raw             []byte // the attestation as sent
}

// Control message kinds and flags (the wire values of tunnel/control.go).
const (
	KindAnnounce = 1
	KindAck      = 2

	FlagActive    = 1 << 0 // the sender uses this key now
	FlagRequest   = 1 << 1 // please announce yours to me
	FlagHaveYours = 1 << 2 // the sender holds your active key
	// FlagDefer, on an ack or a next-key announcement: the sender is
	// rotating too, has not switched, and will switch only after the
	// receiver (a smaller member id) did (see rotatingBefore).
	FlagDefer = 1 << 3
)

// Timing of the protocol.
const (
	// KeepaliveDelay is how long a peer configured without an immediate
	// handshake waits before its persistent keepalive is switched on.
	KeepaliveDelay = 2 * time.Second
	// PromoteTimeout bounds how long a switched member's pending key waits
	// for a handshake before it is promoted anyway (it may have been idle).
	PromoteTimeout = 3 * time.Second
	// RetireAfter is how long the old key's WireGuard peer stays after its
	// address moved to the new key (without allowed IPs or keepalive):
	// packets already queued to it still go out on the old session, which
	// the member still decrypts; removing the peer at once discarded them
	// (wireguard-go drops a stopped peer's outbound queue).
	RetireAfter = time.Second
	// SwitchPauseMax bounds the pause of an own key switch: a peer that does
	// not answer the new handshake holds no one up longer.
	SwitchPauseMax = 500 * time.Millisecond
	// SwitchWait bounds the pause after a peer's first packet on its new
	// session moved its address.
	SwitchWait = 100 * time.Millisecond
	// resendEvery is how often a rotation resends its next key to members
	// that have not acknowledged it.
	resendEvery = time.Second
)

// Errors of Step.
var (
	// ErrRefused: an announcement is not acceptable (it names our own or
	// another member's key). The driver counts it with reason "sender".
	ErrRefused = errors.New("attestation refused")
	// ErrNotMember: an announcement from a member the current policy
	// (the last Policy event) does not list.
	ErrNotMember = errors.New("not a member in the current policy")
	// ErrRotating: a rotation is already in progress.
	ErrRotating = errors.New("a WireGuard key rotation is already in progress")
)

// Config configures a Core. Durations are the driver's resolved values.
type Config struct {
	Member             string
	Keepalive          time.Duration // <= 0: no persistent keepalive
	RotationAckTimeout time.Duration
	RequestInterval    time.Duration
}

// Message is one control message to send.
type Message struct {
	To      string
	Kind    uint8
	Flags   uint8
	Payload []byte
}

// OpKind says what a PeerOp does.
type OpKind uint8

const (
	// OpSet adds or replaces a peer: endpoint, allowed IPs (Addr, or none
	// when invalid) and keepalive.
	OpSet OpKind = iota
	// OpKeepalive updates only the keepalive of an existing peer.
	OpKeepalive
	// OpRemove removes the peer.
	OpRemove
)

// PeerOp is one change of WireGuard's peer configuration.
type PeerOp struct {
	Op        OpKind
	Key       Key
	Member    string     // OpSet: the endpoint
	Addr      netip.Addr // OpSet: the allowed IP; invalid: none
	Keepalive int        // OpSet, OpKeepalive: seconds, 0 = off
}

// Promotion is a member's overlay address moved to its new key.
type Promotion struct {
	Member   string
	Old, New Key // Old zero if there was no active key
	Why      string
}

// Accepted is an announcement that configured a peer (for log and metrics).
type Accepted struct {
	Member string
	Att    *Att
	Active bool // configured with the overlay address
}

// Switch is this member's own key switch.
type Switch struct{ Old, New Key }

// Output is what one Step asks the driver to do, in this order: replace
// the keys awaited by a pause (Promoted), pause, apply Private then Config
// in one IpcSet (end the pause if that fails), wake waiters (Changed), send.
type Output struct {
	Send    []Message
	Private *Key // switch WireGuard's private key first
	Config  []PeerOp
	// Pause holds outgoing packets until each key completed a handshake,
	// at most PauseMax.
	Pause    []Key
	PauseMax time.Duration
	Changed  bool // the peer set or a peer's readiness changed

	Accepted   []Accepted
	ReAttested []Accepted // same key, new identity certificate
	Promoted   []Promotion
	Expired    []string // members whose active key expired (removed)
	Removed    []string // members cut off by a policy change: close their connections
	// Replaced are members whose active key changed other than to their
	// announced next key and who no longer hold our key (or who came back
	// with another key after their peer was removed): they restarted, and
	// connections to the old endpoint are dead.
	Replaced []string
	// Rekeyed are members whose active key was replaced by one they had
	// not announced as their next key: every member in Replaced, and also
	// one that still holds our key (a rotation's next-key announcement was
	// lost, or a restarted member learned our key before its own
	// announcement got through). Users that would rather redial than keep
	// a connection that may be dead close theirs on these.
	Rekeyed     []string
	Unanswered  []string // attestation requests not answered (rate limit)
	Switched    *Switch
	AckMissing  []string // a rotation switched without these members' acks
	TurnTimeout string   // a rotation switched although this member's own rotation was unfinished
	Waiting     bool     // Handshakes: some switched member is still waiting for promotion
	// Poll: a member switched to its pending key; the driver polls
	// handshakes (Handshakes) until none is Waiting.
	Poll bool
}

func (o *Output) send(to string, kind, flags uint8, payload []byte) {
	o.Send = append(o.Send, Message{To: to, Kind: kind, Flags: flags, Payload: payload})
}

// peer is what the core knows about one other member.
type peer struct {
	addr    netip.Addr
	active  *Att // the peer configured with the overlay address
	pending *Att // announced next key, configured without allowed IPs
	// defers: its last ack or next-key announcement said it switches to
	// pending only after we switched (FlagDefer).
	defers  bool
	knowsUs bool // its last active announcement said it holds our key
	// switched is when the member announced its pending key as active
	// (zero until then); the pending peer is promoted after a handshake.
	switched time.Time
}

// ready: both sides hold each other's key, so a handshake can succeed.
func (p *peer) ready() bool { return p != nil && p.active != nil && p.knowsUs }

// Core is the peer state of one member and its own key rotation.
//
// Key rotation without dropping connections. WireGuard keys a peer by
// public key and routes an overlay address to exactly one peer; a handshake
// initiation to a key the other side no longer (or not yet) holds is lost
// until a 5 s retry, and two initiations that cross both fail. So member A
// rotates in steps that never need such a handshake:
//
//  1. A announces its NEXT key (not active). Every peer B adds it as a
//     second, "pending" WireGuard peer with no allowed IPs and acks.
//  2. Once all peers acked (or RotationAckTimeout passed), and no peer is
//     mid-rotation ahead of A (the smaller id goes first, so two switches
//     never overlap; see rotatingBefore), A pauses its outgoing packets,
//     switches its private key, announces the key as active and sends a
//     keepalive to every peer, which starts a handshake with the new key.
//  3. B answers that handshake from the pending peer. B keeps routing to A's
//     old peer meanwhile (its session still decrypts at A), so B never
//     initiates toward the old key. When the first packet of the new
//     session arrives, B moves A's overlay address to the pending peer
//     (FirstPacket) before WireGuard sees that packet; the old peer is
//     removed RetireAfter later, once its queue went out. A completed
//     handshake (Handshakes), or PromoteTimeout after the active
//     announcement, is the fallback.
//
// A Core is not safe for concurrent use: the driver serializes Step.
type Core struct {
	cfg      Config
	members  map[string]netip.Addr // the current policy, this member included
	self     Own
	rot      *rotation
	peers    map[string]*peer
	kaDue    map[Key]time.Time // peers whose keepalive is switched on then
	retiring map[Key]time.Time // old keys' peers to remove then
	// gone are the last active keys of members whose peer was removed
	// (expired, or its configuration failed): one that comes back with
	// another key restarted meanwhile.
	gone     map[string]Key
	requests requestLimiter
}

// New makes a Core for cfg with own key self and the policy's members.
func New(cfg Config, self Own, members map[string]netip.Addr) *Core {
	return &Core{
		cfg: cfg, self: self, members: members,
		peers: map[string]*peer{}, kaDue: map[Key]time.Time{}, retiring: map[Key]time.Time{}, gone: map[string]Key{},
		requests: requestLimiter{every: cfg.RequestInterval},
	}
}

// keepalive is the persistent keepalive in whole seconds.
func (c *Core) keepalive() int { return max(1, int(c.cfg.Keepalive/time.Second)) }

// sortedPeers lists the members with a peer, sorted, so that outputs are
// deterministic.
func (c *Core) sortedPeers() []string {
	out := make([]string, 0, len(c.peers))
	for m := range c.peers {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// others lists the other members of the policy, sorted.
func (c *Core) others() []string {
	out := make([]string, 0, len(c.members))
	for m := range c.members {
		if m != c.cfg.Member {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

// Self is the active own key.
func (c *Core) Self() Own { return c.self }

// Next is the next own key of a rotation in progress (switched or not).
func (c *Core) Next() (Own, bool) {
	if c.rot == nil {
		return Own{}, false
	}
	return c.rot.next, true
}

// Member is the member's overlay address in the current policy.
func (c *Core) Member(m string) (netip.Addr, bool) {
	a, ok := c.members[m]
	return a, ok
}

// Members is the current policy's members (not to be modified).
func (c *Core) Members() map[string]netip.Addr { return c.members }

// PeerInfo is one configured peer.
type PeerInfo struct {
	Member          string
	Addr            netip.Addr
	Active, Pending *Att
	Ready           bool
}

// Peers lists the configured peers, sorted by member.
func (c *Core) Peers() []PeerInfo {
	var out []PeerInfo
	for _, m := range c.sortedPeers() {
		p := c.peers[m]
		out = append(out, PeerInfo{Member: m, Addr: p.addr, Active: p.active, Pending: p.pending, Ready: p.ready()})
	}
	return out
}

// Ready returns member's active key if both sides hold each other's key.
func (c *Core) Ready(member string) (Key, bool) {
	if p := c.peers[member]; p.ready() {
		return p.active.Key, true
	}
	return Key{}, false
}

// Pending returns member's pending key, if it announced one.
func (c *Core) Pending(member string) (Key, bool) {
	if p := c.peers[member]; p != nil && p.pending != nil {
		return p.pending.Key, true
	}
	return Key{}, false
}

// Event is an input of Step.
type Event interface{ isEvent() }

// Step applies ev at now and returns what the driver must do.
func (c *Core) Step(ev Event, now time.Time) (Output, error) {
	var out Output
	var err error
	switch e := ev.(type) {
	case Received:
		err = c.received(&out, e, now)
	case AckReceived:
		c.ackReceived(e)
	case Announce:
		c.announce(&out, e)
	case Tick:
		c.tick(&out, now)
	case Expire:
		c.expire(&out, now)
	case Policy:
		c.policy(&out, e)
	case ConfigFailed:
		c.configFailed(&out, e)
	case Resigned:
		c.resigned(&out, e)
	case RotateStart:
		err = c.rotateStart(&out, e, now)
	case RotateTick:
		c.rotateTick(&out, now)
	case RotateEnd:
		c.rot = nil
	case SwitchFailed:
		c.switchFailed()
	case FirstPacket:
		c.firstPacket(&out, e, now)
	case Handshakes:
		c.handshakes(&out, e, now)
	}
	return out, err
}

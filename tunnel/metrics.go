package tunnel

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics (Config.Registerer). Counters are read at scrape time from the
// Device's atomics, so the hot path pays one atomic add per packet.
//
//	memberd_tunnel_packets_total{direction="in|out"}         WireGuard packets over the transport
//	memberd_tunnel_bytes_total{direction="in|out"}           their bytes
//	memberd_tunnel_control_dropped_total{reason}             queue_full | malformed | bad_ack | request_limited
//	memberd_tunnel_attestations_accepted_total
//	memberd_tunnel_attestations_refused_total{reason}        malformed | signature | expired | identity | sender | not_member | other
//	memberd_tunnel_rotations_total                           WireGuard key rotations of this member
//	memberd_tunnel_identity_changes_total                    attestations re-signed with a new member identity
//	memberd_tunnel_acl_denied_total                          dials and accepts refused by the policy ACL
//	memberd_tunnel_peers                                     members with an active WireGuard peer (gauge)
//	memberd_tunnel_peer_key_switches_total                   peers moved to their new WireGuard key on its session's first packet
//	memberd_tunnel_peer_key_switch_timeouts_total            first packets of a new session released unswitched after the wait bound
//	memberd_tunnel_switch_pause_timeouts_total               own key switches some peer did not answer within the pause
//	memberd_tunnel_panics_total                              forwarded connections closed because serving them panicked

// Control drop reasons.
const (
	dropQueueFull = iota
	dropMalformed
	dropBadAck
	dropRequestLimited // an attestation request not answered (RequestInterval)
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{"queue_full", "malformed", "bad_ack", "request_limited"}

// refusedReasons are the values reasonOf returns, in a fixed order.
var refusedReasons = []string{"malformed", "signature", "expired", "identity", "sender", "not_member", "other"}

type metrics struct {
	ctlDrops [numDropReasons]atomic.Uint64
	refused  [7]atomic.Uint64 // by index in refusedReasons
	panics   atomic.Uint64    // connections closed by survive
}

func (s *counters) dropControl(reason int) {
	s.ctlDropped.Add(1)
	s.m.ctlDrops[reason].Add(1)
}

func (s *counters) refuseAttestation(reason string) {
	s.attRefused.Add(1)
	for i, r := range refusedReasons {
		if r == reason {
			s.m.refused[i].Add(1)
			return
		}
	}
	s.m.refused[len(refusedReasons)-1].Add(1)
}

var (
	descPackets    = prometheus.NewDesc("memberd_tunnel_packets_total", "WireGuard packets carried over the relay transport.", []string{"direction"}, nil)
	descBytes      = prometheus.NewDesc("memberd_tunnel_bytes_total", "Bytes of WireGuard packets carried over the relay transport.", []string{"direction"}, nil)
	descCtlDropped = prometheus.NewDesc("memberd_tunnel_control_dropped_total", "Tunnel control packets dropped, by reason.", []string{"reason"}, nil)
	descAccepted   = prometheus.NewDesc("memberd_tunnel_attestations_accepted_total", "WireGuard key attestations accepted from peers.", nil, nil)
	descRefused    = prometheus.NewDesc("memberd_tunnel_attestations_refused_total", "WireGuard key attestations refused, by reason.", []string{"reason"}, nil)
	descRotations  = prometheus.NewDesc("memberd_tunnel_rotations_total", "WireGuard key rotations of this member.", nil, nil)
	descIDChanges  = prometheus.NewDesc("memberd_tunnel_identity_changes_total", "Times the attestations were re-signed with a new member identity.", nil, nil)
	descACLDenied  = prometheus.NewDesc("memberd_tunnel_acl_denied_total", "Dials and accepts refused by the policy ACL.", nil, nil)
	descPeers      = prometheus.NewDesc("memberd_tunnel_peers", "Members with an active WireGuard peer.", nil, nil)
	descSwitches   = prometheus.NewDesc("memberd_tunnel_peer_key_switches_total",
		"Peers moved to their new WireGuard key on the first packet of the new session.", nil, nil)
	descSwitchTO = prometheus.NewDesc("memberd_tunnel_peer_key_switch_timeouts_total",
		"First packets of a peer's new session released before the peer was moved to the new key (wait bound reached).", nil, nil)
	descPauseTO = prometheus.NewDesc("memberd_tunnel_switch_pause_timeouts_total",
		"Own WireGuard key switches after which some peer did not complete the new handshake within the send pause.", nil, nil)
	descPanics = prometheus.NewDesc("memberd_tunnel_panics_total",
		"Forwarded connections closed because serving them panicked (a bug: the log has the stack).", nil, nil)
)

// collector exports a Device's counters.
type collector struct{ d *Device }

var _ prometheus.Collector = collector{}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descCtlDropped, descAccepted, descRefused, descRotations, descIDChanges, descACLDenied, descPeers, descSwitches, descSwitchTO, descPauseTO, descPanics} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	b := d.io.bind
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descPackets, b.pktIn.Load(), "in")
	counter(descPackets, b.pktOut.Load(), "out")
	counter(descBytes, b.bytesIn.Load(), "in")
	counter(descBytes, b.bytesOut.Load(), "out")
	for i, r := range dropReasonNames {
		counter(descCtlDropped, d.stats.m.ctlDrops[i].Load(), r)
	}
	counter(descAccepted, d.stats.attAccepted.Load())
	for i, r := range refusedReasons {
		counter(descRefused, d.stats.m.refused[i].Load(), r)
	}
	counter(descRotations, d.stats.rotations.Load())
	counter(descIDChanges, d.stats.identityChanges.Load())
	counter(descACLDenied, d.stats.aclDenied.Load())
	counter(descSwitches, d.stats.switchesOnFirstPacket.Load())
	counter(descSwitchTO, d.io.bind.switchMissed.Load())
	counter(descPauseTO, d.stats.switchPauseTimeouts.Load())
	counter(descPanics, d.stats.m.panics.Load())
	d.peers.mu.Lock()
	n := 0
	for _, p := range d.peers.core.Peers() {
		if p.Active != nil {
			n++
		}
	}
	d.peers.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n))
}

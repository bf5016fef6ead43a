package tunnel

import (
	"context"
	"fmt"
	"time"
)

// mtuCheckEvery is how often a derived MTU is compared with the
// transport's current path.
const mtuCheckEvery = time.Second

// mtuLoop keeps a derived MTU (Config.MTU 0) equal to what the transport's
// current path carries: a member that started with no relay reachable
// (MaxPacketSize then reports the smallest QUIC path: MTU 1039) takes the
// path's size (relay.Client: relay.MaxPacketSizeTCP, 16384, on QUIC and
// TCP alike) once a relay is up.
//
// The MTU is that of the netstack interface: TCP connections opened from
// then on use it for their MSS; connections already open keep theirs
// (gVisor sets the MSS at the handshake). Packets larger than the path's
// datagrams still arrive (the relay client carries them on its stream), so
// a stale MTU costs efficiency, not correctness.
func (d *Device) mtuLoop(ctx context.Context) error {
	if d.cfg.MTU != 0 {
		return nil
	}
	t := time.NewTicker(mtuCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := d.followMTU(); err != nil {
				d.log.Warn("the tunnel MTU cannot follow the relay path; it stays as it is", "mtu", d.MTU(), "err", err)
				return nil
			}
		}
	}
}

// followMTU sets the netstack interface MTU to what the transport's path
// carries now, if that differs and is at least MinMTU.
func (d *Device) followMTU() error {
	want := mtuFor(d.io.tr.MaxPacketSize())
	cur := d.MTU()
	if want == cur || want < MinMTU {
		return nil
	}
	s, err := netstackOf(d.io.tnet)
	if err != nil {
		return err
	}
	if terr := s.SetNICMTU(1, uint32(want)); terr != nil { // wireguard-go's netstack has NIC 1
		return fmt.Errorf("set the netstack MTU to %d: %s", want, terr)
	}
	d.mtu.Store(int64(want))
	d.log.Info("tunnel MTU follows the relay path: new connections use it", "mtu", want, "previous_mtu", cur)
	return nil
}

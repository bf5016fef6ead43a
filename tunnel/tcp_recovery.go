package tunnel

import (
	"errors"
	"fmt"
	"reflect"
	"time"
	"unsafe"

	"golang.zx2c4.com/wireguard/tun/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// errNoStack: wireguard-go's netstack no longer has the field reached here.
var errNoStack = errors.New("gVisor stack not found in wireguard-go's netstack (its layout changed)")

// useSACKRecovery switches the tunnel's gVisor TCP from RACK loss
// detection (gVisor's default) to plain SACK recovery (RFC 6675).
//
// Why (issue #4): after a burst loss of a few hundred packets in a full
// window, gVisor's RACK recovery can settle in SACK recovery with cwnd 5
// and retransmit one or two segments per 200 ms RTO, for 10-40 s, although
// nothing is lost any more (measured: every retransmission delivered and
// acknowledged; about 6 KB/s). With RACK off the same losses are recovered
// in a few round trips: the rotation load test without the promotion fix,
// losing about 1,100 packets per run, passed 3 of 3 with RACK off and
// failed 5 of 5 with it on. Key switches no longer lose such bursts, but a
// peer's transport can.
//
// wireguard-go's netstack does not expose its gVisor stack, so it is
// reached by reflection; if that fails (a newer wireguard-go), the caller
// logs it and the tunnel keeps gVisor's default.
func useSACKRecovery(tnet *netstack.Net) error {
	s, err := netstackOf(tnet)
	if err != nil {
		return err
	}
	opt := tcpip.TCPRecovery(0)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		return fmt.Errorf("set gVisor TCP recovery: %s", err)
	}
	return nil
}

// netstackOf is the gVisor stack inside wireguard-go's netstack, which does
// not export it: reached by reflection, errNoStack if its layout changed.
func netstackOf(tnet *netstack.Net) (*stack.Stack, error) {
	v := reflect.ValueOf(tnet).Elem()
	f := v.FieldByName("stack")
	if !f.IsValid() || f.Type() != reflect.TypeOf((*stack.Stack)(nil)) {
		return nil, errNoStack
	}
	s := *(**stack.Stack)(unsafe.Pointer(f.UnsafeAddr()))
	if s == nil {
		return nil, errNoStack
	}
	return s, nil
}

// quiesceTCP stops gVisor's TCP processors and waits until they have
// ended (at most bound), before wireguard-go's netstack interface is
// closed. Its Close closes the channel of outgoing packets right after
// stopping the stack without waiting for it, and a processor still
// draining a closing connection (a peer's segment answered with a RST)
// then sends on the closed channel: "panic: send on closed channel" in
// gVisor's goroutine, which kills the process (seen once in CI under
// -race; upstream WireGuard/wireguard-go#85 is the same race). Stopping
// the processors twice is harmless (their close asserts a waker).
func quiesceTCP(s *stack.Stack, bound time.Duration, log func(msg string, args ...any)) {
	p := s.TransportProtocolInstance(tcp.ProtocolNumber)
	if p == nil {
		return
	}
	p.Close()
	done := make(chan struct{})
	go func() {
		p.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(bound):
		log("tunnel TCP processors still running at close; closing the interface anyway", "waited", bound)
	}
}

package spike

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// TestDeviceUnderSynctest: two real tunnel.Devices (gVisor netstack inside)
// in a bubble: does a TCP dial through the tunnel complete, does virtual
// time advance? A watchdog outside the bubble dumps all stacks after 20s.
func TestDeviceUnderSynctest(t *testing.T) {
	go func() {
		time.Sleep(20 * time.Second)
		buf := make([]byte, 1<<22)
		n := runtime.Stack(buf, true)
		os.WriteFile("/tmp/simtunnel-device-stacks.txt", buf[:n], 0o644)
		os.Exit(3)
	}()
	synctest.Test(t, func(t *testing.T) {
		nw := tunneltest.NewNetwork(tunneltest.Options{MaxPacketSize: 1400})
		var specs []tunneltest.MemberSpec
		for i, id := range []string{"a", "b"} {
			specs = append(specs, tunneltest.MemberSpec{ID: id, Addr: netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}), CA: tunneltest.NewCA(t, id)})
		}
		auth := tunneltest.NewAuthority(specs, nil)
		var devs []*tunnel.Device
		for _, s := range specs {
			signer, chain := s.CA.NewIdentity(t)
			d, err := tunnel.New(tunnel.Config{Member: s.ID, Signer: signer, Chain: chain, Transport: nw.Transport(s.ID), Authority: auth})
			if err != nil {
				t.Fatal(err)
			}
			devs = append(devs, d)
		}
		t.Log("devices up")
		ln, err := devs[1].Listen(7050)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Write([]byte("hi"))
				c.Close()
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		v0 := time.Now()
		c, err := devs[0].Dial(ctx, "b", 7050)
		t.Logf("dial: %v after %v virtual", err, time.Since(v0))
		if err == nil {
			c.Close()
		}
		time.Sleep(time.Minute)
		t.Logf("slept a virtual minute")
		for _, d := range devs {
			d.Close()
		}
	})
}

// Package relaytest holds helpers for tests of the relay and of packages
// that use it: an in-process relay on loopback (Relay) and the port it
// listens on (FreePort). Certificates come from package testpki
// (internal/testpki). Test use only.
package relaytest

import (
	"net"
	"testing"
)

// FreePort returns 127.0.0.1:P where P is free on both TCP and UDP (a
// relay listens on both with one number).
func FreePort(t testing.TB) string {
	t.Helper()
	for range 50 {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := tl.Addr().String()
		ul, err := net.ListenPacket("udp", addr)
		tl.Close()
		if err == nil {
			ul.Close()
			return addr
		}
	}
	t.Fatal("no port free on both TCP and UDP")
	return ""
}

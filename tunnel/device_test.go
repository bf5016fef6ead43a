package tunnel_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestEcho(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := newCluster(t, 2, clusterOpts{})
	a, b := c.devs["bank-a"], c.devs["bank-b"]
	ln, err := b.Listen(7050)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.AcceptConn()
			if err != nil {
				return
			}
			if conn.Member() != "bank-a" {
				t.Errorf("accepted connection from %q, want bank-a", conn.Member())
			}
			go func() { io.Copy(conn, conn); conn.Close() }()
		}
	}()
	conn, err := a.Dial(ctx, "bank-b", 7050)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := []byte("hello through the tunnel")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	if a.MTU() != 1240-32 {
		t.Errorf("MTU = %d, want %d", a.MTU(), 1240-32)
	}
}

// TestTunnelTCPUsesSACKRecovery: netstack's RACK recovery crawled for
// seconds after burst losses (issue #4; tcp_recovery.go).
func TestTunnelTCPUsesSACKRecovery(t *testing.T) {
	c := newCluster(t, 1, clusterOpts{quiet: true})
	got, err := c.devs["bank-a"].TCPRecovery()
	if err != nil {
		t.Fatalf("New took the RACK fallback: %v", err)
	}
	if got != 0 {
		t.Fatalf("netstack TCP recovery = %#x, want 0 (SACK only, no RACK): New took the fallback", got)
	}
}

package raftlogtest

import (
	"context"
	"io"
	"testing"
	"time"
)

func TestPartitionAndHeal(t *testing.T) {
	nw := NewNetwork()
	ln, err := nw.Listen("b")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 4)
	serving := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serving <- struct{}{}
			go func() {
				_, err := io.Copy(io.Discard, c)
				accepted <- err
				c.Close()
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a := nw.Dialer("a")
	c, err := a.DialContext(ctx, "tcp", "b")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	// Partition only once b holds the connection: a connection still in the
	// accept queue at partition time is refused by Accept, never served.
	select {
	case <-serving:
	case <-ctx.Done():
		t.Fatal("b never accepted the connection")
	}
	nw.Partition("b")
	select {
	case <-accepted: // the server side saw its connection end
	case <-ctx.Done():
		t.Fatal("partition did not close the connection")
	}
	if _, err := a.DialContext(ctx, "tcp", "b"); err == nil {
		t.Fatal("dial to a partitioned node succeeded")
	}
	if _, err := nw.Dialer("b").DialContext(ctx, "tcp", "b"); err == nil {
		t.Fatal("dial from a partitioned node succeeded")
	}
	nw.Heal("b")
	c2, err := a.DialContext(ctx, "tcp", "b")
	if err != nil {
		t.Fatalf("after heal: %v", err)
	}
	c2.Close()
	if _, err := a.DialContext(ctx, "tcp", "nobody"); err == nil {
		t.Fatal("dial to an unknown name succeeded")
	}
}

// Package raftlogtest provides a loopback test network for raftlog nodes:
// nodes are addressed by name, each gets a real 127.0.0.1 listener, and a
// node can be cut off (Partition) and reconnected (Heal) without stopping
// it. Only loopback addresses are used.
package raftlogtest

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// Network maps node names to loopback listeners. The zero value is not
// usable; call NewNetwork.
type Network struct {
	mu    sync.Mutex
	addrs map[string]string
	down  map[string]bool
	conns map[*trackedConn]struct{}
	dials map[string]int // attempts by dialer name
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{addrs: map[string]string{}, down: map[string]bool{}, conns: map[*trackedConn]struct{}{}, dials: map[string]int{}}
}

type trackedConn struct {
	net.Conn
	nw       *Network
	from, to string
	once     sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.nw.mu.Lock()
		delete(c.nw.conns, c)
		c.nw.mu.Unlock()
	})
	return c.Conn.Close()
}

// Listen opens a loopback listener for name (replacing an earlier one, as
// when a node restarts).
func (nw *Network) Listen(name string) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	nw.mu.Lock()
	nw.addrs[name] = ln.Addr().String()
	nw.mu.Unlock()
	return &listener{Listener: ln, nw: nw, name: name}, nil
}

type listener struct {
	net.Listener
	nw   *Network
	name string
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.nw.mu.Lock()
		down := l.nw.down[l.name]
		l.nw.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		return l.nw.track(c, "", l.name), nil
	}
}

func (nw *Network) track(c net.Conn, from, to string) net.Conn {
	tc := &trackedConn{Conn: c, nw: nw, from: from, to: to}
	nw.mu.Lock()
	nw.conns[tc] = struct{}{}
	nw.mu.Unlock()
	return tc
}

// Dialer returns the dialer node from uses; addresses are node names.
func (nw *Network) Dialer(from string) *Dialer { return &Dialer{nw: nw, from: from} }

// Dialer dials by node name; it satisfies raftlog.Dialer.
type Dialer struct {
	nw   *Network
	from string
}

// DialContext connects to the node named addr.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.nw.mu.Lock()
	d.nw.dials[d.from]++
	real, ok := d.nw.addrs[addr]
	down := d.nw.down[addr] || d.nw.down[d.from]
	d.nw.mu.Unlock()
	if !ok || down {
		return nil, fmt.Errorf("raftlogtest: %s unreachable from %s", addr, d.from)
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, real)
	if err != nil {
		return nil, err
	}
	return d.nw.track(c, d.from, addr), nil
}

// Dials returns how many connections node from has tried to open.
func (nw *Network) Dials(from string) int {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.dials[from]
}

// Partition cuts name off: its connections close and dials to or from it
// fail until Heal.
func (nw *Network) Partition(name string) {
	nw.mu.Lock()
	nw.down[name] = true
	var victims []*trackedConn
	for c := range nw.conns {
		if c.from == name || c.to == name {
			victims = append(victims, c)
		}
	}
	nw.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

// Heal reconnects name.
func (nw *Network) Heal(name string) {
	nw.mu.Lock()
	delete(nw.down, name)
	nw.mu.Unlock()
}

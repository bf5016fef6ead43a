package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sync/errgroup"
)

// startForwards opens the configured local listeners, overlay services and
// member addresses, served in eg until ctx ends (Run's start-up).
func (d *Device) startForwards(ctx context.Context, eg *errgroup.Group) error {
	for i, f := range d.cfg.Forwards {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", f.Listen)
		if err != nil {
			return fmt.Errorf("forwards[%d]: listen on %s: %w: pick a free local address", i, f.Listen, err)
		}
		d.fwd.addrs = append(d.fwd.addrs, ln.Addr())
		eg.Go(func() error {
			err := d.ServeForward(ctx, ln, f.Member, f.Port)
			if ctx.Err() != nil {
				return nil
			}
			return err
		})
	}
	for i, s := range d.cfg.Services {
		ln, err := d.listen(s.Port)
		if err != nil {
			return fmt.Errorf("services[%d]: %w", i, err)
		}
		eg.Go(func() error {
			err := d.ServeService(ctx, ln, s.Target)
			if ctx.Err() != nil {
				return nil
			}
			return err
		})
	}
	return d.syncMemberAddrs(true)
}

// ForwardAddrs are the local addresses of the configured Forwards, in
// order (useful when a Listen address had port 0); nil until Ready.
func (d *Device) ForwardAddrs() []net.Addr {
	if !d.isUp() {
		return nil
	}
	return append([]net.Addr(nil), d.fwd.addrs...)
}

// ServeForward accepts local connections on ln and forwards each to port on
// member through the tunnel (Dial enforces the ACL). It closes ln and
// returns when ctx ends or ln fails.
func (d *Device) ServeForward(ctx context.Context, ln net.Listener, member string, port uint16) error {
	return d.serve(ctx, ln, func(c net.Conn) {
		defer c.Close()
		local := addrString(c.RemoteAddr()) // before the wait: it may be gone after
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		tc, err := d.Dial(dctx, member, port)
		if err != nil {
			d.log.Warn("forward refused", "local", local, "peer", member, "port", port, "err", err)
			cancel()
			return
		}
		cancel()
		d.splice(ctx, c, tc)
	})
}

// ServeService accepts tunnel connections on ln (already ACL-checked by the
// Listener) and forwards each to target on the LAN. It closes ln and returns
// when ctx ends or ln fails.
func (d *Device) ServeService(ctx context.Context, ln *Listener, target string) error {
	return d.serve(ctx, ln, func(c net.Conn) {
		defer c.Close()
		var nd net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		lc, err := nd.DialContext(dctx, "tcp", target)
		cancel()
		if err != nil {
			peer := ""
			if tc, ok := c.(*Conn); ok {
				peer = tc.Member()
			}
			d.log.Warn("service target unreachable", "target", target, "peer", peer, "err", err)
			return
		}
		d.splice(ctx, c, lc)
	})
}

// serve runs handle for every accepted connection, each in its own
// goroutine, and waits for them all before returning.
func (d *Device) serve(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	active := make(chan struct{}, 1024) // bounds concurrent forwarded connections
	defer func() {
		for range cap(active) { // wait for every handler
			active <- struct{}{}
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", addrString(ln.Addr()), err)
		}
		select {
		case active <- struct{}{}:
		default:
			d.log.Warn("too many forwarded connections; refusing", "listen", addrString(ln.Addr()))
			c.Close()
			continue
		}
		go func() {
			defer func() { <-active }()
			defer d.survive("accepted on "+addrString(ln.Addr()), func() { c.Close() })
			handle(c)
		}()
	}
}

// splice copies both ways until both directions finish, half-closing as
// each side ends, then closes both; ctx ending closes both at once.
func (d *Device) splice(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		defer d.survive("forwarded copy", func() { a.Close(); b.Close(); done <- struct{}{} })
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}

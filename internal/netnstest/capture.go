package netnstest

import (
	"bytes"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Capture counts the frames a host's interfaces carry (both directions, a
// packet socket like tcpdump's) and how many of them contain each needle.
type Capture struct {
	fd      int
	needles [][]byte
	done    chan struct{}
	stopped sync.Once

	mu     sync.Mutex // guards the fields below
	frames int
	bytes  int64
	hits   []int
}

// Capture starts capturing on every interface of h, looking for needles.
func (h *Host) Capture(needles ...[]byte) (*Capture, error) {
	c := &Capture{needles: needles, hits: make([]int, len(needles)), done: make(chan struct{})}
	proto := int(htons(unix.ETH_P_ALL))
	err := h.Do(func() (err error) {
		c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("packet socket in %s: %w", h.NS, err)
	}
	// A read timeout lets the loop see Stop.
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(c.fd)
		return nil, err
	}
	go c.loop()
	return c, nil
}

func (c *Capture) loop() {
	defer unix.Close(c.fd)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil || n <= 0 {
			continue
		}
		c.mu.Lock()
		c.frames++
		c.bytes += int64(n)
		for i, nd := range c.needles {
			if bytes.Contains(buf[:n], nd) {
				c.hits[i]++
			}
		}
		c.mu.Unlock()
	}
}

// Stop ends the capture (idempotent).
func (c *Capture) Stop() { c.stopped.Do(func() { close(c.done) }) }

// Counts returns the frames and bytes seen and, per needle, how many
// frames contained it.
func (c *Capture) Counts() (frames int, bytes int64, hits []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames, c.bytes, append([]int(nil), c.hits...)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

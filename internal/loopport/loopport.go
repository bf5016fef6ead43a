// Package loopport picks loopback ports that are written into configs and
// bound later by another process.
//
// A port the kernel hands out for "127.0.0.1:0" comes from the ephemeral
// range, which every outgoing connection and every ":0" listener on the host
// draws from too; between the pick and the bind another process may take it.
// Free draws from just below the ephemeral range instead, where only
// explicit binds land.
package loopport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu     sync.Mutex
	handed = map[int]bool{} // never hand out a port twice in one process
)

// Free returns 127.0.0.1:P with P free for both TCP and UDP now, drawn below
// the kernel's ephemeral port range.
func Free() (string, error) {
	lo, hi := Range()
	mu.Lock()
	defer mu.Unlock()
	var lastErr error
	for range 500 {
		p := lo + rand.IntN(hi-lo)
		if handed[p] {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			lastErr = err
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		tl.Close()
		if err != nil {
			lastErr = err
			continue
		}
		u.Close()
		handed[p] = true
		return addr, nil
	}
	return "", fmt.Errorf("no free loopback port in %d-%d: %v", lo, hi-1, lastErr)
}

// Range is [lo, hi): up to 12,000 ports just below the start of
// net.ipv4.ip_local_port_range (32768 when it cannot be read), never below
// 10000.
func Range() (lo, hi int) {
	hi = 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 11000 {
				hi = v
			}
		}
	}
	return max(hi-12000, 10000), hi
}

package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// quicUDPBuffer is the UDP socket buffer size quic-go asks for (about 7 MB);
// with less, QUIC throughput suffers under load. packaging/ ships
// /usr/lib/sysctl.d/60-memberd.conf to raise the limits.
const quicUDPBuffer = 7_500_000

// udpBufferSysctls are the kernel limits that cap what quic-go can get.
var udpBufferSysctls = []string{"net/core/rmem_max", "net/core/wmem_max"}

var udpBufferWarning sync.Once

// WarnSmallUDPBuffers logs once per process, naming each sysctl below what
// QUIC needs and how to raise it. procSys is normally "/proc/sys"; a limit
// that cannot be read is skipped (not a Linux host, or a restricted /proc).
func WarnSmallUDPBuffers(log *slog.Logger, procSys string) {
	udpBufferWarning.Do(func() {
		for _, low := range smallUDPBuffers(procSys) {
			log.Warn("UDP buffer limit below what QUIC needs: throughput on the QUIC path will suffer",
				"sysctl", low.name, "value", low.value, "want", quicUDPBuffer, "fix", low.fix())
		}
	})
}

type sysctlValue struct {
	name  string
	value int
}

// fix says how to raise a UDP buffer limit.
func (v sysctlValue) fix() string {
	return "install the memberd package (it ships /usr/lib/sysctl.d/60-memberd.conf) or run: sysctl -w " + v.name + "=" + strconv.Itoa(quicUDPBuffer)
}

// smallUDPBuffers returns the UDP buffer sysctls under procSys that are
// readable and below quicUDPBuffer.
func smallUDPBuffers(procSys string) []sysctlValue {
	var low []sysctlValue
	for _, rel := range udpBufferSysctls {
		b, err := os.ReadFile(filepath.Join(procSys, rel))
		if err != nil {
			continue
		}
		v, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		if v < quicUDPBuffer {
			low = append(low, sysctlValue{name: strings.ReplaceAll(rel, "/", "."), value: v})
		}
	}
	return low
}

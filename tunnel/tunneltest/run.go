package tunneltest

import (
	"context"
	"testing"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// readyWait bounds how long Start waits for a device to come up.
const readyWait = 30 * time.Second

// Start runs d (tunnel.Device.Run) until the test ends and returns once d
// is up (Ready); the test fails if Run returns first or d is not up within
// readyWait. The cleanup closes d and waits until Run has returned.
func Start(t testing.TB, d *tunnel.Device) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		d.Close()
		if err := <-errc; err != nil {
			t.Logf("tunnel Run: %v", err)
		}
	})
	select {
	case <-d.Ready():
	case err := <-errc:
		errc <- err // for the cleanup
		t.Fatalf("tunnel Run returned before the device was up: %v", err)
	case <-time.After(readyWait):
		t.Fatalf("tunnel device not up within %v", readyWait)
	}
}

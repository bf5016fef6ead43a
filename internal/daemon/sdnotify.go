// Package daemon holds what the two long-running memberd processes (the
// appliance and the relay) share with their host: systemd's notify
// protocol, the UDP buffer limits QUIC needs, and certificate expiry
// warnings for /status.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// systemd's notify protocol for the Type=notify units (packaging/*.service),
// spoken through go-systemd's daemon package. Without NOTIFY_SOCKET (not
// started by systemd) NotifySystemd returns at once and sends nothing.

// Probe is what NotifySystemd asks the process.
type Probe struct {
	// Ready says what the service still waits for (nil: ready). A nil
	// Ready means ready at once.
	Ready func(context.Context) error
	// Alive walks the process's state under the locks of its parts (the
	// /status document). It blocks when a part is wedged: then no WATCHDOG=1
	// is sent and systemd restarts the service after WatchdogSec.
	Alive func()
}

const (
	// sdPoll is how often readiness is checked until READY=1.
	sdPoll = time.Second
	// sdStartExtend: while the process is alive but not ready yet (no relay
	// reached, ledger catching up) each poll pushes systemd's start timeout
	// this far out, so a start waits for its relays as long as it takes but
	// a start that wedges is killed.
	sdStartExtend = 30 * time.Second
)

// NotifySystemd runs until ctx ends: READY=1 once p.Ready passes (STATUS=
// says what it waits for until then), WATCHDOG=1 every half WatchdogSec after
// p.Alive returned, STOPPING=1 when ctx ends.
func NotifySystemd(ctx context.Context, log *slog.Logger, p Probe) error {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings unreadable: no WATCHDOG=1 is sent", "err", err)
	}
	send := func(state string) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			log.Warn("cannot notify systemd (NOTIFY_SOCKET)", "state", strings.ReplaceAll(state, "\n", " "), "err", err)
		}
	}
	ready, waiting := false, ""
	t := time.NewTicker(sdPoll)
	defer t.Stop()
	for {
		var msg []string
		p.Alive() // blocks if wedged: no message below
		if wd > 0 {
			msg = append(msg, daemon.SdNotifyWatchdog)
		}
		if !ready {
			var err error
			if p.Ready != nil {
				err = p.Ready(ctx)
			}
			switch {
			case err == nil:
				ready = true
				msg = append(msg, daemon.SdNotifyReady, "STATUS=running")
				log.Info("ready: systemd notified")
				if wd > 0 {
					t.Reset(wd / 2)
				}
			case err.Error() != waiting:
				waiting = err.Error()
				msg = append(msg, "STATUS=waiting: "+waiting)
				fallthrough
			default:
				msg = append(msg, fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", sdStartExtend.Microseconds()))
			}
		}
		if len(msg) > 0 {
			send(strings.Join(msg, "\n"))
		}
		if ready && wd <= 0 {
			<-ctx.Done() // nothing more to send until the stop
		}
		select {
		case <-ctx.Done():
			send(daemon.SdNotifyStopping + "\nSTATUS=stopping")
			return nil
		case <-t.C:
		}
	}
}

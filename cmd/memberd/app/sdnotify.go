package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/memberd/memberd/internal/admin"
)

// systemd's notify protocol for the Type=notify units (packaging/*.service),
// spoken through go-systemd's daemon package. Without NOTIFY_SOCKET (not
// started by systemd) notifySystemd returns at once and sends nothing.

// sdProbe is what notifySystemd asks the process.
type sdProbe struct {
	// ready says what the service still waits for (nil: ready). A nil
	// ready means ready at once.
	ready func(context.Context) error
	// alive walks the process's state under the locks of its parts (the
	// /status document). It blocks when a part is wedged: then no WATCHDOG=1
	// is sent and systemd restarts the service after WatchdogSec.
	alive func()
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

// notifySystemd runs until ctx ends: READY=1 once p.ready passes (STATUS=
// says what it waits for until then), WATCHDOG=1 every half WatchdogSec after
// p.alive returned, STOPPING=1 when ctx ends.
func notifySystemd(ctx context.Context, log *slog.Logger, p sdProbe) error {
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
		p.alive() // blocks if wedged: no message below
		if wd > 0 {
			msg = append(msg, daemon.SdNotifyWatchdog)
		}
		if !ready {
			var err error
			if p.ready != nil {
				err = p.ready(ctx)
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

// applianceProbe: ready when the admin endpoint's readiness checks pass (a
// relay connected, this member in the policy, a raft leader known) and the
// ledger has applied every raft entry known to be committed.
func applianceProbe(a *appliance, checks map[string]admin.Check) sdProbe {
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	slices.Sort(names)
	return sdProbe{
		ready: func(ctx context.Context) error {
			for _, n := range names {
				if err := checks[n](ctx); err != nil {
					return fmt.Errorf("%s: %w", n, err)
				}
			}
			if a.ledger != nil {
				return a.ledger.caughtUp()
			}
			return nil
		},
		alive: func() { applianceStatus(a) },
	}
}

// caughtUp: a raft leader is known and this node has applied every entry it
// knows to be committed.
func (l *ledgerRun) caughtUp() error {
	n := l.reg.Lookup(l.channel)
	if n == nil {
		return fmt.Errorf("ledger: channel %q is not open", l.channel)
	}
	if err := n.Healthy(); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if rs := n.Raft().Status(); rs.Applied < rs.Commit {
		return fmt.Errorf("ledger catching up: raft entry %d of %d applied", rs.Applied, rs.Commit)
	}
	return nil
}

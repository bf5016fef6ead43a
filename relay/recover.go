package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"
)

// addrString names a for a log line or error: "unknown" when nil (a
// connection whose endpoint is gone may report none), and fmt's "<nil>"
// for a typed nil pointer, whose String fmt does not let panic.
func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return fmt.Sprint(a)
}

// errPanic marks the error of a goroutine serving one connection that
// panicked (a bug): guarded turns the panic into it.
var errPanic = errors.New("panic serving the connection (a bug)")

// guarded runs fn and returns its error or, if fn panics, an error that
// wraps errPanic and carries the panic value and the stack.
func guarded(fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: %v\n%s", errPanic, v, debug.Stack())
		}
	}()
	return fn()
}

// survived logs and counts err if it comes from a recovered panic, and
// then waits a moment (until ctx ends) so that a connection that panics
// again at once is not retried in a tight loop. It reports whether err
// was one.
func (m *metrics) survived(ctx context.Context, log *slog.Logger, err error, attrs ...any) bool {
	if !errors.Is(err, errPanic) {
		return false
	}
	m.panics.Inc()
	log.Error("panic serving a relay connection; closed that connection only", append(attrs, "err", err.Error())...)
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	return true
}

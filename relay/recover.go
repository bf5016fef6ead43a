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
// panicked (a bug): guarded turns the panic into a *panicError, which is
// errPanic.
var errPanic = errors.New("panic serving the connection (a bug)")

// panicError is a recovered panic: its message names the value (it may
// reach memberd status); the stack is for the log.
type panicError struct {
	value string
	stack []byte
}

func (e *panicError) Error() string        { return errPanic.Error() + ": " + e.value }
func (e *panicError) Is(target error) bool { return target == errPanic }

// guarded runs fn and returns its error or, if fn panics, a *panicError.
func guarded(fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &panicError{value: fmt.Sprint(v), stack: debug.Stack()}
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
	var stack []byte
	if pe := (*panicError)(nil); errors.As(err, &pe) {
		stack = pe.stack
	}
	log.Error("panic serving a relay connection; closed that connection only",
		append(attrs, "err", err.Error(), "stack", string(stack))...)
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	return true
}

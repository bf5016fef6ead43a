package orderer

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RecoveryOptions are grpc.ServerOptions for the caller's grpc.Server that
// turn a panic in a handler (a bug one client's request reached) into
// codes.Internal for that call only, logged with its stack and counted
// (memberd_ledger_panics_total); the process and the other calls go on.
// grpc-go has no such interceptor built in, and without one a handler's
// panic ends the process. Add them beside ServerOptions.
func RecoveryOptions(log *slog.Logger, m *Metrics) []grpc.ServerOption {
	r := recoverer{log: log, m: m}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(r.unary), grpc.ChainStreamInterceptor(r.stream)}
}

type recoverer struct {
	log *slog.Logger
	m   *Metrics
}

func (r recoverer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer r.catch(info.FullMethod, &err)
	return h(ctx, req)
}

func (r recoverer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer r.catch(info.FullMethod, &err)
	return h(srv, ss)
}

// guard wraps a goroutine a handler starts (the interceptors see only the
// handler's own goroutine).
func (r recoverer) guard(method string, fn func() error) func() error {
	return func() (err error) {
		defer r.catch(method, &err)
		return fn()
	}
}

// catch, deferred, turns a panic of the calling goroutine into err.
func (r recoverer) catch(method string, err *error) {
	v := recover()
	if v == nil {
		return
	}
	r.m.panicked()
	r.log.Error("panic serving a gRPC call; failed that call only", "method", method,
		"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	*err = status.Errorf(codes.Internal, "internal error serving %s (the orderer's log has the details)", method)
}

// recoverTo, deferred in a goroutine that handles what a peer sent (not a
// gRPC handler), turns its panic into err: logged with its stack, counted
// (memberd_ledger_panics_total); the caller treats err like any failure
// of that peer.
func recoverTo(log *slog.Logger, m *Metrics, what string, err *error) {
	v := recover()
	if v == nil {
		return
	}
	m.panicked()
	log.Error("panic "+what+"; treated as that peer's failure", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	*err = fmt.Errorf("internal error %s: %v (the log has the stack)", what, v)
}

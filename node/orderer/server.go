package orderer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// Defaults of ServerConfig.
const (
	DefaultTimeWindow          = 15 * time.Minute
	DefaultMaxPendingPerStream = 8192
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Lookup returns the node ordering a channel, nil if none. Required.
	Lookup func(channelID string) *Node
	// TimeWindow: a Deliver SeekInfo envelope's timestamp must be within this
	// of the server's clock (Fabric's General.Authentication.TimeWindow).
	// Default 15m.
	TimeWindow time.Duration
	// MaxPendingPerStream bounds the Broadcast envelopes of one stream that
	// are admitted but not yet answered (responses keep request order).
	// Default 8192.
	MaxPendingPerStream int
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Metrics records Broadcast and Deliver outcomes; nil records nothing.
	Metrics *Metrics
	Logger  *slog.Logger // nil discards
}

// Validate reports the first problem with c.
func (c *ServerConfig) Validate() error {
	if c.Lookup == nil {
		return fmt.Errorf("%w: ServerConfig.Lookup is required", ErrInvalidConfig)
	}
	if c.TimeWindow < 0 || c.MaxPendingPerStream < 0 {
		return fmt.Errorf("%w: negative TimeWindow or MaxPendingPerStream", ErrInvalidConfig)
	}
	return nil
}

// Server implements Fabric's orderer.AtomicBroadcast service. It does not
// listen: Register it on a grpc.ServiceRegistrar that the caller owns, e.g.
//
//	gs := grpc.NewServer(append(orderer.ServerOptions(),
//		grpc.Creds(credentials.NewTLS(orderer.ServerTLS(orderer.TLSCertificate(id), pol, true))))...)
//	srv.Register(gs)
type Server struct {
	ab.UnimplementedAtomicBroadcastServer
	cfg ServerConfig
	log *slog.Logger
	rec recoverer // for the goroutines of a Broadcast stream
}

var _ ab.AtomicBroadcastServer = (*Server)(nil)

// NewServer returns a Server for cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.TimeWindow == 0 {
		cfg.TimeWindow = DefaultTimeWindow
	}
	if cfg.MaxPendingPerStream == 0 {
		cfg.MaxPendingPerStream = DefaultMaxPendingPerStream
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Logger, rec: recoverer{log: cfg.Logger, m: cfg.Metrics}}, nil
}

// Register registers the AtomicBroadcast service on r.
func (s *Server) Register(r grpc.ServiceRegistrar) { ab.RegisterAtomicBroadcastServer(r, s) }

var marshalEnv = proto.MarshalOptions{Deterministic: true}

// Broadcast receives envelopes and answers each, in order, with SUCCESS once
// it is in a block committed by raft and stored by this node (see the package
// doc), or with the reason it was refused. Envelopes of one stream are
// admitted and ordered as they arrive (pipelined); answers wait for commit.
func (s *Server) Broadcast(stream grpc.BidiStreamingServer[common.Envelope, ab.BroadcastResponse]) error {
	type result struct {
		p   *Pending
		err error
		at  time.Time // admitted
	}
	results := newFIFO[result](s.cfg.MaxPendingPerStream) // memory as the backlog, not the bound
	g, ctx := errgroup.WithContext(stream.Context())
	const method = "/orderer.AtomicBroadcast/Broadcast"
	g.Go(s.rec.guard(method, func() error {
		defer results.close()
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			var r result
			r.p, r.err = s.order(ctx, msg)
			r.at = s.cfg.Now()
			if !results.push(ctx, r) {
				return ctx.Err()
			}
		}
	}))
	g.Go(s.rec.guard(method, func() error {
		for {
			r, ok := results.pop()
			if !ok {
				return nil
			}
			err := r.err
			if err == nil {
				err = r.p.Wait(ctx)
			}
			s.cfg.Metrics.broadcastDone(err, r.at, s.cfg.Now())
			resp := &ab.BroadcastResponse{Status: StatusOf(err)}
			if err != nil {
				resp.Info = err.Error()
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}))
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *Server) order(ctx context.Context, msg *common.Envelope) (*Pending, error) {
	raw, err := marshalEnv.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", block.ErrMalformed, err)
	}
	env, err := block.ParseEnvelope(raw)
	if err != nil {
		return nil, err
	}
	n := s.cfg.Lookup(env.ChannelID())
	if n == nil {
		return nil, fmt.Errorf("%w: channel %q is not served by this node", ErrNotFound, env.ChannelID())
	}
	return n.OrderEnvelope(ctx, env)
}

// Deliver serves blocks with Fabric's semantics; see deliver.
func (s *Server) Deliver(stream grpc.BidiStreamingServer[common.Envelope, ab.DeliverResponse]) error {
	s.cfg.Metrics.streamOpen(1)
	defer s.cfg.Metrics.streamOpen(-1)
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		st, err := s.deliver(stream.Context(), stream, msg)
		s.cfg.Metrics.deliverDone(st)
		if err != nil {
			s.log.Debug("deliver request refused", "status", st, "err", err)
		}
		if st == common.Status_UNKNOWN { // the stream broke while sending
			return err
		}
		if err := stream.Send(&ab.DeliverResponse{Type: &ab.DeliverResponse_Status{Status: st}}); err != nil {
			return err
		}
	}
}

type blockSender interface {
	Send(*ab.DeliverResponse) error
}

// deliver runs one SeekInfo request and returns the final status (UNKNOWN
// when sending failed). Checks, in Fabric's order: payload and channel header
// (BAD_REQUEST), timestamp window (BAD_REQUEST), channel (NOT_FOUND), seek
// info (BAD_REQUEST), consensus health unless BEST_EFFORT
// (SERVICE_UNAVAILABLE), signature and reader role (FORBIDDEN), positions
// (BAD_REQUEST if start > stop), FAIL_IF_NOT_READY past the height
// (NOT_FOUND); then blocks, then SUCCESS.
func (s *Server) deliver(ctx context.Context, out blockSender, msg *common.Envelope) (common.Status, error) {
	raw, err := marshalEnv.Marshal(msg)
	if err != nil {
		return common.Status_BAD_REQUEST, err
	}
	env, err := block.ParseEnvelope(raw)
	if err != nil {
		return common.Status_BAD_REQUEST, err
	}
	if env.Type() != common.HeaderType_DELIVER_SEEK_INFO {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: header type %s, want DELIVER_SEEK_INFO", ErrBadRequest, env.Type())
	}
	ts := env.ChannelHeader.GetTimestamp()
	if ts == nil {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: channel header has no timestamp", ErrBadRequest)
	}
	if d := s.cfg.Now().Sub(ts.AsTime()); d > s.cfg.TimeWindow || d < -s.cfg.TimeWindow {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: envelope timestamp %s is more than %v apart from the server's clock", ErrBadRequest, ts.AsTime().UTC(), s.cfg.TimeWindow)
	}
	n := s.cfg.Lookup(env.ChannelID())
	if n == nil {
		return common.Status_NOT_FOUND, fmt.Errorf("%w: channel %q", ErrNotFound, env.ChannelID())
	}
	var seek ab.SeekInfo
	if err := proto.Unmarshal(env.Data, &seek); err != nil {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: seek info: %v", ErrBadRequest, err)
	}
	if seek.Start == nil || seek.Stop == nil || seek.Start.Type == nil || seek.Stop.Type == nil {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: seek info needs start and stop positions", ErrBadRequest)
	}
	strict := seek.ErrorResponse != ab.SeekInfo_BEST_EFFORT
	if strict {
		if err := n.Healthy(); err != nil {
			return common.Status_SERVICE_UNAVAILABLE, err
		}
	}
	pol := n.Policy()
	if err := n.adm.authenticate(env, readerRoles...); err != nil {
		return common.Status_FORBIDDEN, err
	}
	height := n.Height()
	start, ok := seekNumber(seek.Start, height)
	if !ok {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: unknown start position", ErrBadRequest)
	}
	stop, ok := seekNumber(seek.Stop, height)
	if !ok {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: unknown stop position", ErrBadRequest)
	}
	if _, next := seek.Stop.Type.(*ab.SeekPosition_NextCommit); next {
		stop = start // Fabric: NextCommit as stop means the next block only
	}
	if stop < start {
		return common.Status_BAD_REQUEST, fmt.Errorf("%w: start block %d is after stop block %d", ErrBadRequest, start, stop)
	}
	failIfNotReady := seek.Behavior == ab.SeekInfo_FAIL_IF_NOT_READY
	for num := start; ; num++ {
		if num >= n.Height() {
			if failIfNotReady {
				return common.Status_NOT_FOUND, fmt.Errorf("%w: block %d not yet written (height %d)", ErrNotFound, num, n.Height())
			}
			if st, err := s.wait(ctx, n, num, strict); err != nil {
				return st, err
			}
		}
		if p := n.Policy(); p != pol { // governance changed: re-check the reader
			pol = p
			if err := n.adm.authenticate(env, readerRoles...); err != nil {
				return common.Status_FORBIDDEN, err
			}
		}
		b, err := n.store.Get(num)
		if err != nil {
			return common.Status_SERVICE_UNAVAILABLE, err
		}
		if seek.ContentType == ab.SeekInfo_HEADER_WITH_SIG {
			b = &common.Block{Header: b.Header, Metadata: b.Metadata}
		}
		if err := out.Send(&ab.DeliverResponse{Type: &ab.DeliverResponse_Block{Block: b}}); err != nil {
			return common.Status_UNKNOWN, err
		}
		s.cfg.Metrics.blockSent()
		if num == stop {
			return common.Status_SUCCESS, nil
		}
	}
}

// readerRoles may pull blocks: every role implies reading the ledger.
var readerRoles = []policy.Role{policy.RoleReader, policy.RoleWriter, policy.RoleConsenter, policy.RoleObserver}

// wait blocks until block num exists; a strict request fails with
// SERVICE_UNAVAILABLE while the node is cut off from consensus.
func (s *Server) wait(ctx context.Context, n *Node, num uint64, strict bool) (common.Status, error) {
	for {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		err := n.store.Wait(wctx, num)
		cancel()
		if err == nil {
			return common.Status_SUCCESS, nil
		}
		if ctx.Err() != nil {
			return common.Status_SERVICE_UNAVAILABLE, ctx.Err()
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return common.Status_SERVICE_UNAVAILABLE, err
		}
		if strict {
			if err := n.Healthy(); err != nil {
				return common.Status_SERVICE_UNAVAILABLE, err
			}
		}
	}
}

func seekNumber(p *ab.SeekPosition, height uint64) (uint64, bool) {
	switch t := p.Type.(type) {
	case *ab.SeekPosition_Oldest:
		return 0, true
	case *ab.SeekPosition_Newest:
		return height - 1, true
	case *ab.SeekPosition_Specified:
		return t.Specified.GetNumber(), true
	case *ab.SeekPosition_NextCommit:
		return height, true
	}
	return 0, false
}

// MaxBlock is the Specified number that means "no stop": deliver forever.
const MaxBlock = math.MaxUint64

// MaxMessageBytes is the gRPC message size limit ServerOptions and
// ClientOptions set: above Fabric's largest AbsoluteMaxBytes (99 MiB) plus a
// block's metadata, as Fabric's own 100 MiB default.
const MaxMessageBytes = 128 << 20

// KeepaliveMinInterval is the shortest client ping interval the server
// accepts. A Fabric peer's deliver client pings every 60s
// (peer.keepalive.deliveryClient.interval) on a stream that may be idle
// for long; gRPC's default (5 min, no pings without a stream) answers that
// with GOAWAY "too_many_pings" after a few minutes and the peer reconnects.
// Fabric's orderer accepts 60s; 10s also lets tests ping faster.
const KeepaliveMinInterval = 10 * time.Second

// ServerOptions are the grpc.ServerOptions the caller's grpc.Server needs
// for this service (gRPC's 4 MiB default would refuse large envelopes and
// blocks; its keepalive enforcement would cut idle Fabric peers off). Add
// the TLS credentials (ServerTLS) beside them.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveMinInterval, PermitWithoutStream: true})}
}

// Receive windows of ClientOptions: a stream may have this many bytes in
// flight before the client's window update, the connection (every
// stream) ClientConnWindow.
const (
	ClientStreamWindow = 4 << 20
	ClientConnWindow   = 16 << 20
)

// ClientOptions are the matching grpc.DialOptions for clients, with
// receive windows fit for pulling blocks (a catch-up through the relays)
// over a path of a long round trip: gRPC starts at 64 KiB and grows with
// its estimate of the path, about doubling each round trip, so a 14 MB
// catch-up over 200 ms took 9-10 round trips instead of 2 (TestFetchLongRoundTrip).
// Memory is held only for bytes the caller has not read yet.
func ClientOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
		grpc.WithInitialWindowSize(ClientStreamWindow), grpc.WithInitialConnWindowSize(ClientConnWindow)}
}

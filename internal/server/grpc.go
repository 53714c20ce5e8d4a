package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs/errgrpc"
)

// Config configures NewGRPCServer.
type Config struct {
	// Manager serves the sandbox RPCs. Required.
	Manager Manager
	// Events serves the Events RPC. Required.
	Events EventSource
	// Health is the grpc.health.v1 server to register. When nil a new one
	// is created. NewGRPCServer marks the overall health ("") and
	// sandbox.v1.SandboxService SERVING; the owner calls Shutdown on it
	// when the daemon stops.
	Health *health.Server
	// Logger receives request and panic logs (default slog.Default()).
	Logger *slog.Logger
	// Snapshots serves SandboxSnapshotService; nil answers
	// FAILED_PRECONDITION.
	Snapshots SnapshotManager
	// Recovering, when set, reports whether the daemon is still
	// re-adopting its sandboxes: while it returns true every sandbox.v1
	// call answers UNAVAILABLE ("recovering") and the health service says
	// NOT_SERVING; the owner sets the health status to SERVING when
	// recovery has finished. Nil means the daemon is ready at once.
	Recovering func() bool
	// EventSubscribers caps the concurrent Events streams; servers that
	// share one share the cap. Nil means a cap of
	// DefaultMaxEventSubscribers for this server alone.
	EventSubscribers *SubscriberLimit
	// EventSendTimeout is how long one event may wait for a client that
	// does not read before its stream is ended as a slow consumer
	// (DefaultEventSendTimeout when zero).
	EventSendTimeout time.Duration
}

// Transport sizes. The windows bound what a client may have in flight
// towards the daemon on one stream and one connection (fixed sizes also
// turn off grpc's window growth); a shared write buffer is released
// between writes, so idle connections hold none. What the daemon has
// queued towards a client that does not read is bounded by grpc's write
// quota per stream (64 KiB), one page of history and EventSendTimeout.
const (
	streamWindow     = 64 << 10
	connWindow       = 256 << 10
	writeBufferBytes = 32 << 10
)

// NewGRPCServer returns a grpc.Server with the sandbox.v1 services,
// grpc.health.v1 and server reflection registered, and with chained unary
// and stream interceptors for request logging and panic recovery (a panic
// becomes INTERNAL and is logged with its stack). opts are appended (for
// example transport credentials).
func NewGRPCServer(cfg Config, opts ...grpc.ServerOption) *grpc.Server {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ic := interceptors{log: log, recovering: cfg.Recovering}
	all := append([]grpc.ServerOption{
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.WriteBufferSize(writeBufferBytes),
		grpc.SharedWriteBuffer(true),
		grpc.ChainUnaryInterceptor(ic.logUnary, ic.gateUnary, ic.recoverUnary),
		grpc.ChainStreamInterceptor(ic.logStream, ic.gateStream, ic.recoverStream),
	}, opts...)
	s := grpc.NewServer(all...)
	svc := NewService(cfg.Manager, cfg.Events, log)
	if cfg.EventSubscribers != nil {
		svc.subscribers = cfg.EventSubscribers
	}
	if cfg.EventSendTimeout > 0 {
		svc.sendTimeout = cfg.EventSendTimeout
	}
	sandboxv1.RegisterSandboxServiceServer(s, svc)
	sandboxv1.RegisterSandboxSnapshotServiceServer(s, NewSnapshotService(cfg.Snapshots))
	hs := cfg.Health
	if hs == nil {
		hs = health.NewServer()
	}
	serving := healthpb.HealthCheckResponse_SERVING
	if cfg.Recovering != nil && cfg.Recovering() {
		serving = healthpb.HealthCheckResponse_NOT_SERVING
	}
	SetServing(hs, serving)
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s
}

// SetServing sets the overall health status and that of
// sandbox.v1.SandboxService.
func SetServing(hs *health.Server, st healthpb.HealthCheckResponse_ServingStatus) {
	hs.SetServingStatus("", st)
	hs.SetServingStatus(sandboxv1.SandboxService_ServiceDesc.ServiceName, st)
}

// interceptors holds the logger the interceptors write to and the
// recovery gate.
type interceptors struct {
	log        *slog.Logger
	recovering func() bool
}

// errRecovering is what a sandbox.v1 call gets while the daemon re-adopts
// its sandboxes: UNAVAILABLE marked with errgrpc.ReasonRecovering, which
// tells clients that the call did nothing and may be repeated.
var errRecovering = errgrpc.Recovering("vmm-daemon is recovering its sandboxes after a restart; retry shortly")

// gated reports whether method must wait for the end of recovery: every
// call but health checks and reflection.
func (ic interceptors) gated(method string) bool {
	if ic.recovering == nil || strings.HasPrefix(method, "/grpc.health.") || strings.HasPrefix(method, "/grpc.reflection.") {
		return false
	}
	return ic.recovering()
}

// gateUnary answers UNAVAILABLE while the daemon is recovering.
func (ic interceptors) gateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if ic.gated(info.FullMethod) {
		return nil, errRecovering
	}
	return handler(ctx, req)
}

// gateStream answers UNAVAILABLE while the daemon is recovering.
func (ic interceptors) gateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if ic.gated(info.FullMethod) {
		return errRecovering
	}
	return handler(srv, ss)
}

// logUnary logs every unary call with its method, code and duration.
func (ic interceptors) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	ic.logCall(ctx, info.FullMethod, start, err)
	return resp, err
}

// logStream logs every streaming call when it ends.
func (ic interceptors) logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	ic.logCall(ss.Context(), info.FullMethod, start, err)
	return err
}

// logCall writes one request log line: info for successes and calls the
// client canceled, warn for refused requests, error for failures the server
// caused; health checks and reflection at debug level.
func (ic interceptors) logCall(ctx context.Context, method string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelInfo
	switch {
	case code == codes.Unknown || code == codes.Internal || code == codes.DataLoss:
		level = slog.LevelError
	case strings.HasPrefix(method, "/grpc.health.") || strings.HasPrefix(method, "/grpc.reflection."):
		level = slog.LevelDebug
	case code == codes.Canceled:
		// The client went away (e.g. `vmm events` interrupted): routine.
	case err != nil:
		level = slog.LevelWarn
	}
	if !ic.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", method),
		slog.String("code", code.String()),
		slog.Duration("duration", time.Since(start)),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	ic.log.LogAttrs(ctx, level, "grpc request", attrs...)
}

// recoverUnary turns a panic in a unary handler into INTERNAL.
func (ic interceptors) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, ic.panicked(ctx, info.FullMethod, r)
		}
	}()
	return handler(ctx, req)
}

// recoverStream turns a panic in a stream handler into INTERNAL.
func (ic interceptors) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = ic.panicked(ss.Context(), info.FullMethod, r)
		}
	}()
	return handler(srv, ss)
}

// panicked logs a recovered panic with its stack and returns the status the
// client sees.
func (ic interceptors) panicked(ctx context.Context, method string, r any) error {
	ic.log.LogAttrs(ctx, slog.LevelError, "panic in gRPC handler",
		slog.String("method", method),
		slog.String("panic", fmt.Sprint(r)),
		slog.String("stack", string(debug.Stack())))
	return status.Errorf(codes.Internal, "internal error in %s (see the daemon log)", method)
}

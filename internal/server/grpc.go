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
}

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
	ic := interceptors{log: log}
	all := append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(ic.logUnary, ic.recoverUnary),
		grpc.ChainStreamInterceptor(ic.logStream, ic.recoverStream),
	}, opts...)
	s := grpc.NewServer(all...)
	sandboxv1.RegisterSandboxServiceServer(s, NewService(cfg.Manager, cfg.Events, log))
	sandboxv1.RegisterSandboxSnapshotServiceServer(s, NewSnapshotService(cfg.Snapshots))
	hs := cfg.Health
	if hs == nil {
		hs = health.NewServer()
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(sandboxv1.SandboxService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s
}

// interceptors holds the logger the interceptors write to.
type interceptors struct {
	log *slog.Logger
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

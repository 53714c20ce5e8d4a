// Package server is the daemon's thin gRPC layer: it converts sandbox.v1
// requests into calls on the sandbox manager and the event exchange, and
// their results back into protobuf messages. Every error it returns passes
// through errgrpc.ToGRPC, so the errdefs class of an error decides its status
// code; the manager stays the authority on what a valid request is.
//
// NewGRPCServer builds the one grpc.Server configuration the daemon uses:
// panic recovery and request logging interceptors, the sandbox.v1 services,
// grpc.health.v1 and server reflection (so grpcurl works against the
// socket).
//
// Only internal/daemon (and tests) should import this package.
package server

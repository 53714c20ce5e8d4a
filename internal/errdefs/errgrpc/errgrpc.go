// Package errgrpc is the one place where errdefs classes and gRPC status
// codes meet: the server calls ToGRPC on every error it returns, the client
// calls ToNative on every error it receives.
package errgrpc

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// table maps each class to its code. Order matters only for errors that
// wrap several classes: the first match wins.
var table = []struct {
	class error
	code  codes.Code
}{
	{errdefs.ErrInvalidArgument, codes.InvalidArgument},
	{errdefs.ErrNotFound, codes.NotFound},
	{errdefs.ErrAlreadyExists, codes.AlreadyExists},
	{errdefs.ErrFailedPrecondition, codes.FailedPrecondition},
	{errdefs.ErrResourceExhausted, codes.ResourceExhausted},
	{errdefs.ErrPermissionDenied, codes.PermissionDenied},
	{errdefs.ErrUnavailable, codes.Unavailable},
	{errdefs.ErrNotImplemented, codes.Unimplemented},
	{errdefs.ErrAborted, codes.Aborted},
	{errdefs.ErrCanceled, codes.Canceled},
	{errdefs.ErrDeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// codeOf returns the gRPC code for err's class (Unknown when it has none).
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	for _, e := range table {
		if errors.Is(err, e.class) {
			return e.code
		}
	}
	return codes.Unknown
}

// ToGRPC converts err into a gRPC status error whose code follows err's
// class and whose message is err's text. nil stays nil; an error that
// already is a status passes through.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}

// ToNative converts a gRPC status error back into an error of the matching
// errdefs class, keeping the server's message. Errors that are not statuses
// pass through.
func ToNative(err error) error {
	if err == nil {
		return nil
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, e := range table {
		if e.code == s.Code() {
			return &nativeError{msg: s.Message(), class: e.class, st: s}
		}
	}
	return err
}

// nativeError carries the server's message and matches its class with
// errors.Is.
type nativeError struct {
	msg   string
	class error
	st    *status.Status
}

func (e *nativeError) Error() string { return e.msg }

// Unwrap returns the errdefs class.
func (e *nativeError) Unwrap() error { return e.class }

// GRPCStatus lets status.FromError recover the original status.
func (e *nativeError) GRPCStatus() *status.Status { return e.st }

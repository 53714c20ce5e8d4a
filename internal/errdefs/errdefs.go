// Package errdefs defines the error classes shared by every layer of the
// daemon. Adapters and the sandbox manager wrap one of these sentinels with
// context (fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)); the gRPC
// layer maps the class to a status code in one place (package errgrpc), and
// the client maps it back, so callers on both sides test classes with
// errors.Is (errors.Is(err, errdefs.ErrAlreadyExists)), or IsNotFound and
// IsInvalidArgument for the common cases.
//
// It imports the standard library only.
package errdefs

import "errors"

// The error classes. Each maps to the gRPC code of the same meaning.
var (
	// ErrInvalidArgument: the request is malformed or out of range.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: an object with that name already exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrFailedPrecondition: the object is not in a state that allows the operation.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrResourceExhausted: a limit or pool ran out.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrPermissionDenied: the request names something the operator did not allow.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: the service cannot answer now (e.g. shutting down, no daemon).
	ErrUnavailable = errors.New("unavailable")
	// ErrNotImplemented: the operation exists in the API but is not implemented.
	ErrNotImplemented = errors.New("not implemented")
	// ErrCanceled: the operation was canceled.
	ErrCanceled = errors.New("canceled")
	// ErrDeadlineExceeded: the operation did not finish in time.
	ErrDeadlineExceeded = errors.New("deadline exceeded")
	// ErrAborted: the operation was aborted by a concurrent one.
	ErrAborted = errors.New("aborted")
)

// IsInvalidArgument reports whether err is of class ErrInvalidArgument.
func IsInvalidArgument(err error) bool { return errors.Is(err, ErrInvalidArgument) }

// IsNotFound reports whether err is of class ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

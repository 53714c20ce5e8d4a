// Package errdefs defines the error classes shared by every layer of the
// daemon. Adapters and the sandbox manager wrap one of these sentinels with
// context (fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)); the gRPC
// layer maps the class to a status code in one place (package errgrpc), and
// the client maps it back, so callers on both sides test classes with
// errors.Is or the IsXxx helpers.
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

// IsAlreadyExists reports whether err is of class ErrAlreadyExists.
func IsAlreadyExists(err error) bool { return errors.Is(err, ErrAlreadyExists) }

// IsFailedPrecondition reports whether err is of class ErrFailedPrecondition.
func IsFailedPrecondition(err error) bool { return errors.Is(err, ErrFailedPrecondition) }

// IsResourceExhausted reports whether err is of class ErrResourceExhausted.
func IsResourceExhausted(err error) bool { return errors.Is(err, ErrResourceExhausted) }

// IsPermissionDenied reports whether err is of class ErrPermissionDenied.
func IsPermissionDenied(err error) bool { return errors.Is(err, ErrPermissionDenied) }

// IsUnavailable reports whether err is of class ErrUnavailable.
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// IsNotImplemented reports whether err is of class ErrNotImplemented.
func IsNotImplemented(err error) bool { return errors.Is(err, ErrNotImplemented) }

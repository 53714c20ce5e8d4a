package errgrpc

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The ErrorInfo that marks the daemon's answer while it re-adopts its
// sandboxes after a restart: the call was refused before it did anything,
// so a client may repeat any call, Create included.
const (
	// ReasonRecovering is the ErrorInfo reason.
	ReasonRecovering = "RECOVERING"
	// Domain is the ErrorInfo domain of the daemon's reasons.
	Domain = "sandbox.v1"
)

// Recovering returns the UNAVAILABLE status the daemon answers while it
// recovers, carrying an ErrorInfo with ReasonRecovering.
func Recovering(msg string) error {
	st := status.New(codes.Unavailable, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: ReasonRecovering, Domain: Domain}); err == nil {
		st = d
	}
	return st.Err()
}

// IsRecovering reports whether err is the daemon's answer while it
// recovers (UNAVAILABLE with an ErrorInfo of ReasonRecovering).
func IsRecovering(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == ReasonRecovering && info.GetDomain() == Domain {
			return true
		}
	}
	return false
}

package errgrpc

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

func TestRoundTrip(t *testing.T) {
	tests := []struct {
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
		{errdefs.ErrDeadlineExceeded, codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			err := fmt.Errorf("sandbox %q: %w", "x", tt.class)
			g := ToGRPC(err)
			s, ok := status.FromError(g)
			if !ok || s.Code() != tt.code || s.Message() != err.Error() {
				t.Fatalf("ToGRPC = %v (code %v), want code %v message %q", g, s.Code(), tt.code, err)
			}
			n := ToNative(g)
			if !errors.Is(n, tt.class) || n.Error() != err.Error() {
				t.Fatalf("ToNative = %v, not of class %v", n, tt.class)
			}
			if codeOf(n) != tt.code {
				t.Fatalf("codeOf(native) = %v", codeOf(n))
			}
		})
	}
}

func TestEdgeCases(t *testing.T) {
	if ToGRPC(nil) != nil || ToNative(nil) != nil {
		t.Fatal("nil must stay nil")
	}
	if c := codeOf(errors.New("plain")); c != codes.Unknown {
		t.Fatalf("plain error code = %v", c)
	}
	if c := codeOf(fmt.Errorf("waiting: %w", context.DeadlineExceeded)); c != codes.DeadlineExceeded {
		t.Fatalf("context deadline code = %v", c)
	}
	st := status.Error(codes.Internal, "boom")
	if ToGRPC(st) != st {
		t.Fatal("a status must pass through ToGRPC")
	}
	plain := errors.New("transport")
	if ToNative(plain) != plain {
		t.Fatal("a non-status must pass through ToNative")
	}
}

func TestIsRecovering(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"recovering", Recovering("recovering"), true},
		{"recovering through ToNative", ToNative(Recovering("recovering")), true},
		{"plain unavailable", status.Error(codes.Unavailable, "recovering"), false},
		{"another code", status.Error(codes.Internal, "x"), false},
		{"not a status", errors.New("recovering"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		if got := IsRecovering(tt.err); got != tt.want {
			t.Errorf("%s: IsRecovering = %v, want %v", tt.name, got, tt.want)
		}
	}
}

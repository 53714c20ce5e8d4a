package client

import (
	"context"
	"time"

	"google.golang.org/grpc"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs/errgrpc"
)

// Waiting for a daemon that is recovering.
const (
	// recoveryWait bounds how long a call waits for a daemon that answers
	// that it is still re-adopting its sandboxes after a restart.
	recoveryWait = 30 * time.Second
	// recoveryBackoff is the first pause between attempts; it doubles up
	// to recoveryMaxBackoff.
	recoveryBackoff    = 50 * time.Millisecond
	recoveryMaxBackoff = time.Second
)

// waitRecovery repeats a unary call the daemon refused because it is still
// recovering (errgrpc.IsRecovering: the call did nothing, so any call may
// be repeated), with backoff, until it is answered otherwise, ctx ends or
// recoveryWait has passed. Every other answer is returned as it is.
func waitRecovery(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	deadline := time.Now().Add(recoveryWait)
	pause := recoveryBackoff
	for {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if !errgrpc.IsRecovering(err) || time.Now().Add(pause).After(deadline) {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, recoveryMaxBackoff)
	}
}

// Command vmm-daemon serves the sandbox.v1 gRPC API and manages Firecracker
// microVM sandboxes. See internal/daemon and docs/config.example.toml.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/firecracker-vmm/firecracker-vmm/internal/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, a second one kills the process the usual way.
	context.AfterFunc(ctx, stop)
	code := daemon.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

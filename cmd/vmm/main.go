// Command vmm is the command line client of vmm-daemon: it creates, lists,
// inspects, stops and removes sandboxes, streams their events and manages
// their snapshots. See internal/cli for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/firecracker-vmm/firecracker-vmm/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// Command vmm-bench measures vmm-daemon's create→READY latency (p50, p90,
// p99) and throughput against a baseline measured in the same run: the same
// Firecracker processes started and configured directly, with no daemon.
//
// "vmm-bench recover" measures instead how long a restarted daemon takes
// to serve with sandboxes left running (see recoverMain).
//
// By default it uses the vmm-daemon and firecracker-emulator binaries that
// sit next to it (make build puts them all in ./bin).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/firecracker-vmm/firecracker-vmm/internal/bench"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "recover" {
		os.Exit(recoverMain(os.Args[2:]))
	}
	self, _ := os.Executable()
	binDir := filepath.Dir(self)
	o := bench.Options{Log: os.Stderr}
	var bootDelay int
	flag.StringVar(&o.Daemon, "daemon", filepath.Join(binDir, "vmm-daemon"), "vmm-daemon binary")
	flag.StringVar(&o.Firecracker, "firecracker", filepath.Join(binDir, "firecracker-emulator"), "firecracker binary (or the emulator)")
	flag.IntVar(&o.N, "n", 100, "sandboxes created per series")
	flag.IntVar(&o.Concurrency, "concurrency", 10, "creates in flight at once")
	flag.IntVar(&o.VCPUs, "vcpus", 1, "vCPUs per microVM")
	flag.IntVar(&o.MemoryMiB, "memory", 512, "memory per microVM (MiB)")
	flag.IntVar(&o.RootfsMiB, "rootfs", 256, "rootfs image size (MiB, sparse)")
	flag.BoolVar(&o.Network, "network", false, "add a series with networking on (needs root; runs the daemon in a throwaway network namespace)")
	flag.IntVar(&o.Snapshots, "snapshots", 0, "checkpoint one sandbox this many times and restore this many sandboxes (pause, checkpoint and restore→READY figures)")
	flag.IntVar(&bootDelay, "boot-delay-ms", 0, "emulated guest boot time (FCEMU_BOOT_DELAY_MS); 0 measures pure overhead")
	flag.Parse()
	if bootDelay > 0 {
		o.Env = append(o.Env, fmt.Sprintf("FCEMU_BOOT_DELAY_MS=%d", bootDelay))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := bench.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmm-bench:", err)
		os.Exit(1)
	}
	fmt.Printf("create→READY, n=%d, concurrency=%d, %d vCPU, %d MiB, rootfs %d MiB, boot delay %d ms\n",
		o.N, o.Concurrency, o.VCPUs, o.MemoryMiB, o.RootfsMiB, bootDelay)
	r.Fprint(os.Stdout)
}
